// Copyright The baremetal_sd Authors
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

package relay

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"iter"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Protobuf input. A frame is one MetricFamily, up to max_frame_bytes on
// the wire, but decoding a frame whole can take a hundred times that: a
// tiny gauge is a dozen bytes on the wire and over a kilobyte in Go
// structs. So the frame is kept as bytes, its metadata read first (a field
// may come after the metrics, as unit does in client libraries), and its
// metrics decoded one at a time into parts of about partBytes, each emitted
// as a family of the same name, as the text path emits oversized families.
// One metric may take at most max_metric_bytes, estimated before it is
// decoded (decodedSize).

// partBytes is about how much decoded memory a part of a protobuf family
// holds before it is emitted.
const partBytes = 1 << 20

// errMetricTooLarge is one metric (a histogram or summary with all its
// buckets or quantiles) larger than max_metric_bytes.
var errMetricTooLarge = errors.New("upstream metric exceeds max_metric_bytes")

// Field numbers of io.prometheus.client.MetricFamily.
const (
	fieldFamilyName   = 1
	fieldFamilyHelp   = 2
	fieldFamilyType   = 3
	fieldFamilyMetric = 4
	fieldFamilyUnit   = 5
)

// pbHeader is a MetricFamily without its metrics.
type pbHeader struct {
	name string
	help *string
	unit *string
	typ  dto.MetricType
	// legacy says name is a classic metric name. meta is the family's
	// metadata lines for a scraper of text (OpenMetrics when metaOM), with
	// names spelled by metaEsc, as appendFamilyMeta writes them; "" when the
	// output is protobuf.
	legacy  bool
	meta    string
	metaOM  bool
	metaEsc model.EscapingScheme
	// metaMarks are the marks of the lines of meta (see familyWriter),
	// their ends counted from its start.
	metaMarks []lineMark
	// keep holds the verdicts of fast name rules on the series names of the
	// family's metrics (the name, _bucket, _sum, _count), once known.
	keep    [4]bool
	keepSet bool
}

// protobufFamilies reads varint-delimited MetricFamily frames. Metrics are
// decoded into client_model types directly: they are what the output
// needs, and going through textparse's protobuf parser would flatten native
// histograms and exemplars into series only to rebuild them.
func (p *pipeline) protobufFamilies(body io.Reader, emit func(*dto.MetricFamily) error) error {
	if p.frameReader == nil {
		p.frameReader = bufio.NewReaderSize(body, 64<<10)
	} else {
		p.frameReader.Reset(body)
	}
	defer p.frameReader.Reset(nil)
	for {
		frame, err := readFrame(p.frameReader, p.frameBuf, p.maxFrame)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p.frameBuf = frame
		h, err := p.readHeader(frame)
		if err != nil {
			return fmt.Errorf("%w: %w", errParse, err)
		}
		if p.pbStream.to != nil {
			ok, err := p.streamFamily(frame, h)
			if err != nil {
				return err
			}
			if ok {
				continue
			}
		}
		if err := p.protobufFamily(frame, h, emit); err != nil {
			p.protobufPart.reset(nil)
			return err
		}
	}
}

// pbHeaders remembers the headers of the families a pipeline relayed from
// protobuf, across scrapes: an exporter sends the same families with the
// same help every time, and a header read anew is two or three strings
// allocated and checked, its name's spelling worked out and, for a scraper
// of text, its metadata lines written. On node_exporter's payload, 1,228
// families of 2.5 samples each, that was a third of the cost of protobuf
// written as text. A header is filed under its fields as they came and how
// they are written (see headerKey), so a hit is a header that passed
// scanFamily's checks for the same output. The map is bounded in bytes and
// starts over when full.
type pbHeaders struct {
	index map[string]*pbHeader
	bytes int
	key   []byte
}

// pbHeadersMaxBytes bounds a pipeline's pbHeaders: about 2,500 families of
// node_exporter's (it sends 1,228), and little beside its buffers.
const pbHeadersMaxBytes = 1 << 20

// pbHeaderOverhead is about what a remembered header costs beyond its
// strings: the map slot and the pbHeader.
const pbHeaderOverhead = 160

// pbFields are the fields of a MetricFamily other than its metrics, as they
// came.
type pbFields struct {
	name, help, unit []byte
	hasHelp, hasUnit bool
	typ              dto.MetricType
}

// readHeader reads the header of a frame, from pbHeaders when the pipeline
// saw it before. The header is valid until the next frame's.
func (p *pipeline) readHeader(frame []byte) (*pbHeader, error) {
	f, err := scanFields(frame)
	if err != nil {
		return nil, err
	}
	text := p.familyFormat != FormatProtobuf
	om := p.familyFormat == FormatOpenMetrics
	hs := &p.pbHeaders
	hs.key = f.appendKey(hs.key[:0], text, om, p.escaping)
	if h, ok := hs.index[string(hs.key)]; ok {
		p.header = *h
		return &p.header, nil
	}
	h, err := f.header(text)
	if err != nil {
		return nil, err
	}
	h.legacy = isLegacyName(h.name, true)
	if text {
		var marks []lineMark
		h.meta = string(appendFamilyMetaMarked(nil, &marks, h.name, h.typ, h.help, h.unit, om, p.escaping))
		h.metaMarks = marks
		h.metaOM, h.metaEsc = om, p.escaping
	}
	// The key, the strings, the lines and their marks of 16 bytes.
	size := 2*len(hs.key) + len(h.meta) + 16*cap(h.metaMarks) + pbHeaderOverhead
	if hs.bytes+size > pbHeadersMaxBytes || hs.index == nil {
		hs.index, hs.bytes = make(map[string]*pbHeader), 0
	}
	if size <= pbHeadersMaxBytes {
		hs.index[string(hs.key)] = &h
		hs.bytes += size
	}
	p.header = h
	return &p.header, nil
}

// appendKey appends the key under which pbHeaders files a header: how it
// is written (text, OpenMetrics, the spelling of names), its type and its
// fields.
func (f *pbFields) appendKey(b []byte, text, om bool, esc model.EscapingScheme) []byte {
	mode := byte(esc) << 2
	if text {
		mode |= 1
	}
	if om {
		mode |= 2
	}
	b = append(b, mode)
	b = binary.AppendUvarint(b, uint64(uint32(f.typ)))
	b = binary.AppendUvarint(b, uint64(len(f.name)))
	b = append(b, f.name...)
	for _, v := range [...]struct {
		set   bool
		value []byte
	}{{f.hasHelp, f.help}, {f.hasUnit, f.unit}} {
		if !v.set {
			b = append(b, 0)
			continue
		}
		b = binary.AppendUvarint(b, uint64(len(v.value))+1)
		b = append(b, v.value...)
	}
	return b
}

// scanFields reads the fields of a MetricFamily other than its metrics. As
// in proto.Unmarshal, the last of a repeated scalar wins and a field with
// an unexpected wire type is skipped as unknown.
func scanFields(frame []byte) (pbFields, error) {
	var f pbFields
	for b := frame; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return f, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case typ == protowire.BytesType && (num == fieldFamilyName || num == fieldFamilyHelp || num == fieldFamilyUnit):
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return f, protowire.ParseError(n)
			}
			switch num {
			case fieldFamilyName:
				f.name = v
			case fieldFamilyHelp:
				f.help, f.hasHelp = v, true
			default:
				f.unit, f.hasUnit = v, true
			}
			b = b[n:]
		case typ == protowire.VarintType && num == fieldFamilyType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return f, protowire.ParseError(n)
			}
			f.typ = dto.MetricType(int32(v))
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return f, protowire.ParseError(n)
			}
			b = b[n:]
		}
	}
	return f, nil
}

// header validates the fields (see validString) and makes them a header.
func (f *pbFields) header(text bool) (pbHeader, error) {
	h := pbHeader{name: string(f.name), typ: f.typ}
	if f.hasHelp {
		s := string(f.help)
		h.help = &s
	}
	if f.hasUnit {
		s := string(f.unit)
		h.unit = &s
	}
	if h.name == "" || !validString(h.name, text) {
		return h, errors.New("metric family without a valid name")
	}
	if h.help != nil && !validString(*h.help, text) || h.unit != nil && !validString(*h.unit, text) {
		return h, fmt.Errorf("family %q: help or unit is not UTF-8 or has a NUL byte", truncate(h.name))
	}
	if _, ok := dto.MetricType_name[int32(h.typ)]; !ok {
		return h, fmt.Errorf("family %q: unknown metric type %d", truncate(h.name), h.typ)
	}
	return h, nil
}

// familyMetrics yields the metric fields of a MetricFamily frame that
// scanFamily has walked already, so its fields are well-formed.
func familyMetrics(frame []byte) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for b := frame; len(b) > 0; {
			num, typ, n := protowire.ConsumeTag(b)
			b = b[n:]
			n = protowire.ConsumeFieldValue(num, typ, b)
			field := b[:n]
			b = b[n:]
			if num != fieldFamilyMetric || typ != protowire.BytesType {
				continue
			}
			mb, _ := protowire.ConsumeBytes(field)
			if !yield(mb) {
				return
			}
		}
	}
}

// protobufFamily decodes, validates and relabels the metrics of one frame,
// emitting them in parts.
func (p *pipeline) protobufFamily(frame []byte, h *pbHeader, emit func(*dto.MetricFamily) error) error {
	p.protobufPart.reset(h)
	for mb := range familyMetrics(frame) {
		size, err := decodedSize(mb, msgMetric)
		if err != nil {
			return fmt.Errorf("%w: family %q: %w", errParse, truncate(h.name), err)
		}
		if size > p.maxMetric {
			return fmt.Errorf("%w: family %q has a metric of about %d bytes", errMetricTooLarge, truncate(h.name), size)
		}
		m := &dto.Metric{}
		// Unknown fields are dropped, not relayed: they include known
		// fields with the wrong wire type, which other decoders (such as
		// Prometheus') refuse.
		if err := (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(mb, m); err != nil {
			return fmt.Errorf("%w: family %q: %w", errParse, truncate(h.name), err)
		}
		if err := validateMetric(h.typ, m, p.familyFormat != FormatProtobuf); err != nil {
			return fmt.Errorf("%w: family %q: %w", errParse, truncate(h.name), err)
		}
		if p.stripCreated {
			stripCreated(m)
		}
		p.protobufPart.size += size
		if err := p.protobufMetric(h, m); err != nil {
			return err
		}
		if p.protobufPart.size >= partBytes {
			if err := p.protobufPart.emit(emit); err != nil {
				return err
			}
		}
	}
	return p.protobufPart.emit(emit)
}

// stripCreated drops created timestamps, for protobuf input written as
// OpenMetrics: the exporter would not have sent _created lines there, and
// Prometheus would store them as series of their own.
func stripCreated(m *dto.Metric) {
	switch {
	case m.Counter != nil:
		m.Counter.CreatedTimestamp = nil
	case m.Summary != nil:
		m.Summary.CreatedTimestamp = nil
	case m.Histogram != nil:
		m.Histogram.CreatedTimestamp = nil
	}
}
