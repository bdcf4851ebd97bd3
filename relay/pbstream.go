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
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Protobuf input without client_model messages. Most families are
// counters, gauges and untyped metrics whose metrics are a few labels, a
// value and maybe a timestamp. Such a family is relayed from its wire
// bytes: each metric's label fields are looked up in the series cache (or
// relabeled on a miss, through protobufMetric, and remembered), and the
// metric is written as the rewritten label fields followed by its value
// and timestamp fields as they came, or, for a scraper of text or
// OpenMetrics, as a sample line of those labels, value and timestamp
// (appendSample), after metadata lines where familyWriter would write them.
// Decoding the metric, relabeling it and encoding it again, which every
// other family still does, would write the same bytes: the stream path
// takes a family only when that holds, and hands it to protobufFamily
// otherwise, from its first metric.
//
// That is the case when every metric is in the form proto.Marshal writes
// (fields in order, each once, minimal varints), has only fields the
// stream path knows, and passes validateMetric's checks, and when the
// family's name needs no escaping for the scraper. A family of up to
// streamBufferBytes is held until it is done, and its first metric that is
// not so, or that a rule renames, sends it to protobufFamily, which relays
// it or reports what is wrong. A larger family is checked whole first, and
// metrics that rules rename are written after each part, as protobufFamily
// writes them. Label names that relabeling gives and the scraper cannot
// read are escaped as familyWriter escapes them.

// pbStream holds the buffers of the stream path, reused across families.
type pbStream struct {
	// off sends every family through protobufFamily, and the metrics of
	// text input written as protobuf through client_model messages (see
	// assembler.wire): the tests compare the two paths.
	off bool
	// to is the writer of the relay's output while the stream path is on
	// (protobuf input), nil otherwise.
	to  *familyWriter
	out []byte // the frames or lines of the family at hand
	// marks are the marks of the lines in out, when the output is text
	// or OpenMetrics to a writer that takes them (marking; see
	// familyWriter).
	marks   []lineMark
	marking bool
	// frameMarks are the marks of the frames in out, when the output is
	// protobuf to a writer that takes them (framing); head is the mark of
	// the part at hand, but for where it is.
	frameMarks []frameMark
	framing    bool
	head       frameMark
	body       []byte // the MetricFamily message of the part at hand
	labels     []byte // scratch for the label fields of the metric at hand
	// seriesBuf is scratch for the series text remembered for a scraper
	// of text.
	seriesBuf []byte
	// The metric's label fields as written, one after the other:
	// labelBytes the input's, or labels rewritten; labelPair the
	// exporter label's field and labelAfter the input's that follow it,
	// when the label is put among the input's; labelText a cached
	// outcome.
	labelBytes, labelPair, labelAfter []byte
	labelText                         string
	// series is a cached outcome for a scraper of text: the series text,
	// name{labels}, as appendSeries writes it ("" for none).
	series string
	names  [][]byte // its label names, for the duplicate check
	// label is the exporter label's name, "" for none: scanMetric finds
	// where it goes among a metric's labels (pbMetricShape.labelAt).
	label string
	// pairText is the label field pairField as appendLabel writes it for a
	// scraper of text with names spelled by pairEsc (name="value"):
	// written once rather than read from the field for every series.
	pairText  []byte
	pairField []byte
	pairEsc   model.EscapingScheme
	// streamed counts the families relayed from their wire bytes.
	streamed int
	// missPart is protobufPart set up for the family at hand, for
	// relabeling a metric on a cache miss.
	missPart bool
	// direct is set while a family is written as it goes (see
	// streamBufferBytes): it can no longer go to protobufFamily.
	direct bool
	// text is set when the output is text or OpenMetrics (om): the
	// metrics are written as sample lines instead of frames. last is the
	// family the output's last metadata lines were written for, as
	// familyWriter.last, while a family is relayed.
	text, om bool
	last     string
}

// pbMetricShape is what scanMetric learns of a metric's fields.
type pbMetricShape struct {
	labelsEnd int // the label fields are the metric's first labelsEnd bytes
	size      int // decodedSize of the metric
	// labelAt is where addLabelPair puts the exporter label (pbStream.label)
	// among the label fields: before the first name not less than it, -1
	// when a label has that name already, which addLabelPair relabels.
	labelAt int
	// labelsSize is the label fields' share of size, when cachedLabels
	// checked them.
	labelsSize int
}

// valueField is the Metric field that carries a value of a family of
// type typ, 0 for the types the stream path does not take.
func valueField(typ dto.MetricType) protowire.Number {
	switch typ {
	case dto.MetricType_GAUGE:
		return 2
	case dto.MetricType_COUNTER:
		return 3
	case dto.MetricType_UNTYPED:
		return 5
	}
	return 0
}

// streamBufferBytes is the largest frame whose output the stream path
// holds until the family is done, so that it can still hand the family to
// protobufFamily. A larger frame is checked whole first and written part by
// part, so that memory stays bounded by about a part, as protobufFamily's.
const streamBufferBytes = 256 << 10

// streamFamily relays one family from its wire bytes into the output, and
// reports false, having written and counted nothing, when protobufFamily
// must relay it instead.
func (p *pipeline) streamFamily(frame []byte, h *pbHeader) (bool, error) {
	s := &p.pbStream
	s.text, s.om, s.last = s.to.out != FormatProtobuf, s.to.out == FormatOpenMetrics, s.to.last
	s.marking = s.text && s.to.marked != nil
	s.framing = !s.text && s.to.framed != nil
	value := valueField(h.typ)
	legacy := p.escaping != model.NoEscaping
	if value == 0 || legacy && !h.legacy {
		return false, nil
	}
	s.direct = len(frame) > streamBufferBytes
	s.label = p.label
	if s.text && (string(s.pairField) != string(p.labelField) || s.pairEsc != p.escaping) {
		s.setPairText(p.labelField, p.escaping)
	}
	if s.direct && !s.streamable(frame, value, legacy, p.maxMetric) {
		return false, nil
	}
	samples := p.samples
	s.out, s.marks, s.frameMarks, s.missPart = s.out[:0], s.marks[:0], s.frameMarks[:0], false
	s.startPart(h)
	partSize, metrics := 0, 0
	// With rules, a metric's labels are checked only when the series cache
	// does not know them: an entry is filed under label fields that were
	// checked for the same output (see cachedLabels).
	cached := p.cache != nil && len(p.relabels) > 0
	for mb := range familyMetrics(frame) {
		// A direct family passed these checks in streamable.
		shape, ok := s.scanMetric(mb, value, legacy, !cached)
		var e *seriesEntry
		var written string
		if ok && cached {
			e, written, ok = p.cachedLabels(h, mb, &shape, legacy)
		}
		if !ok || shape.size > p.maxMetric {
			p.samples = samples
			return false, nil
		}
		partSize += shape.size
		keep, ok, err := p.streamLabels(h, mb, shape, e, written)
		if err != nil {
			return false, err
		}
		if !ok {
			p.samples = samples
			return false, nil
		}
		if keep && s.text {
			s.body = s.appendSample(s.body, h, mb[shape.labelsEnd:], p.escaping)
			metrics++
		} else if keep {
			rest := mb[shape.labelsEnd:]
			s.body = protowire.AppendTag(s.body, fieldFamilyMetric, protowire.BytesType)
			s.body = protowire.AppendVarint(s.body, uint64(len(s.labelBytes)+len(s.labelPair)+len(s.labelAfter)+len(s.labelText)+len(rest)))
			s.body = append(append(append(s.body, s.labelBytes...), s.labelPair...), s.labelAfter...)
			s.body = append(append(s.body, s.labelText...), rest...)
			metrics++
		}
		// Parts end where protobufFamily ends them, so the frames are
		// the same.
		if partSize >= partBytes {
			if err := p.endStreamPart(h, metrics); err != nil {
				return false, err
			}
			s.startPart(h)
			partSize, metrics = 0, 0
		}
	}
	if err := p.endStreamPart(h, metrics); err != nil {
		return false, err
	}
	s.streamed++
	if !s.direct {
		s.to.last = s.last
		return true, s.write(s.out)
	}
	return true, nil
}

// streamable reports whether every metric of a frame passes scanMetric
// and max_metric_bytes, for a family written before it is done.
func (s *pbStream) streamable(frame []byte, value protowire.Number, legacy bool, maxMetric int) bool {
	for mb := range familyMetrics(frame) {
		if shape, ok := s.scanMetric(mb, value, legacy, true); !ok || shape.size > maxMetric {
			return false
		}
	}
	return true
}

// endStreamPart ends a part: its frame, and when the family is written as
// it goes, the families relabeling moved metrics of the part into, as
// protobufFamily writes them after the part.
func (p *pipeline) endStreamPart(h *pbHeader, metrics int) error {
	s := &p.pbStream
	s.endPart(h, metrics, p.escaping)
	if !s.direct {
		return nil
	}
	s.to.last = s.last
	if err := s.write(s.out); err != nil {
		return err
	}
	s.out, s.marks, s.frameMarks = s.out[:0], s.marks[:0], s.frameMarks[:0]
	if !s.missPart {
		return nil
	}
	pt := &p.protobufPart
	for _, f := range append(pt.moved.list, pt.loose.list...) {
		if err := s.to.write(f); err != nil {
			return err
		}
	}
	s.last = s.to.last
	pt.moved.reset()
	pt.loose.reset()
	return nil
}

// write adds frames, or lines with their marks, to the output.
func (s *pbStream) write(b []byte) error {
	if s.text {
		return s.to.writeLines(b, s.marks)
	}
	return s.to.writeFrames(b, s.frameMarks)
}

// startPart begins a part's MetricFamily with the fields before the
// metrics, in proto.Marshal's order; in the text formats, its sample lines.
func (s *pbStream) startPart(h *pbHeader) {
	if s.text {
		s.body = s.body[:0]
		return
	}
	b := protowire.AppendTag(s.body[:0], fieldFamilyName, protowire.BytesType)
	b = protowire.AppendString(b, h.name)
	s.head.name = [2]int{len(b) - len(h.name), len(b)}
	s.head.help = [2]int{}
	if h.help != nil {
		b = protowire.AppendTag(b, fieldFamilyHelp, protowire.BytesType)
		b = protowire.AppendString(b, *h.help)
		s.head.help = [2]int{len(b) - len(*h.help), len(b)}
	}
	b = protowire.AppendTag(b, fieldFamilyType, protowire.VarintType)
	s.body = protowire.AppendVarint(b, uint64(h.typ))
	s.head.typ, s.head.metrics[0] = h.typ, len(s.body)
}

// endPart writes the part as a frame, unless relabeling left it without
// metrics (familyWriter writes no empty family either). In the text
// formats it writes the part's sample lines, after the family's metadata
// lines when they are due, as familyWriter.write does.
func (s *pbStream) endPart(h *pbHeader, metrics int, esc model.EscapingScheme) {
	if metrics == 0 {
		return
	}
	if s.text {
		bare := h.typ == dto.MetricType_UNTYPED && h.help == nil && h.unit == nil
		switch {
		case bare || h.name == s.last:
		case h.meta != "" && h.metaOM == s.om && h.metaEsc == esc:
			if s.marking {
				for _, m := range h.metaMarks {
					m.end += len(s.out)
					s.marks = append(s.marks, m)
				}
			}
			s.out = append(s.out, h.meta...)
		case s.marking:
			s.out = appendFamilyMetaMarked(s.out, &s.marks, h.name, h.typ, h.help, h.unit, s.om, esc)
		default:
			s.out = appendFamilyMeta(s.out, h.name, h.typ, h.help, h.unit, s.om, esc)
		}
		s.out = append(s.out, s.body...)
		if s.marking {
			// Every sample line of the part starts with the family's
			// name as appendSeries spells it: one mark (markSample).
			s.marks = append(s.marks, lineMark{end: len(s.out)})
		}
		if !bare {
			s.last = h.name
		}
		return
	}
	s.head.metrics[1], s.head.unit = len(s.body), [2]int{}
	if h.unit != nil {
		s.body = protowire.AppendTag(s.body, fieldFamilyUnit, protowire.BytesType)
		s.body = protowire.AppendString(s.body, *h.unit)
		s.head.unit = [2]int{len(s.body) - len(*h.unit), len(s.body)}
	}
	start := len(s.out)
	s.out = protowire.AppendVarint(s.out, uint64(len(s.body)))
	if s.framing {
		m := s.head
		m.start, m.body = start, len(s.out)-start
		m.end = m.body + len(s.body)
		s.frameMarks = append(s.frameMarks, m)
	}
	s.out = append(s.out, s.body...)
}

// appendSample writes the sample line of a metric of family h as
// appendFamily does: the series, s.series or else the metric's label
// fields (see appendSeries), and rest, its value field and perhaps its
// timestamp, which scanMetric checked.
func (s *pbStream) appendSample(b []byte, h *pbHeader, rest []byte, esc model.EscapingScheme) []byte {
	if s.series != "" {
		b = append(b, s.series...)
	} else {
		b = s.appendSeries(b, h, esc)
	}
	// The value field: tag, length 9, tag of the double, the double.
	v := math.Float64frombits(binary.LittleEndian.Uint64(rest[3:11]))
	var ts *int64
	if len(rest) > 11 {
		t, _ := protowire.ConsumeVarint(rest[12:])
		ms := int64(t)
		ts = &ms
	}
	b = appendValueTimestamp(b, v, ts, s.om)
	return append(b, '\n')
}

// appendSeries writes the series text of a metric of family h, as
// appendFamily does: its name and the label pairs of s.labelBytes,
// s.labelPair, s.labelAfter and s.labelText.
func (s *pbStream) appendSeries(b []byte, h *pbHeader, esc model.EscapingScheme) []byte {
	var open bool
	if h.legacy {
		b = append(b, h.name...)
	} else {
		b, open = appendSeriesName(b, h.name, "", esc)
	}
	b, open = appendLabelFields(b, open, s.labelBytes, esc)
	if len(s.labelPair) > 0 {
		// The exporter label: streamFamily wrote its text.
		if open {
			b = append(b, ',')
		} else {
			b = append(b, '{')
		}
		b, open = append(b, s.pairText...), true
	}
	b, open = appendLabelFields(b, open, s.labelAfter, esc)
	b, open = appendLabelFields(b, open, s.labelText, esc)
	if open {
		b = append(b, '}')
	}
	return b
}

// setPairText writes the text of the exporter label's field for names
// spelled by esc (pairText).
func (s *pbStream) setPairText(field []byte, esc model.EscapingScheme) {
	s.pairField = append(s.pairField[:0], field...)
	s.pairEsc = esc
	s.pairText, _ = appendLabelFields(s.pairText[:0], false, field, esc)
	if len(s.pairText) > 0 {
		s.pairText = s.pairText[1:] // the brace
	}
}

// appendLabelFields writes the label pairs of a metric's label fields,
// which scanMetric checked or the relay wrote, as appendLabel does.
func appendLabelFields[S string | []byte](b []byte, open bool, fields S, esc model.EscapingScheme) ([]byte, bool) {
	for len(fields) > 0 {
		// The field's tag and length; in the pair, the name's tag,
		// length and bytes, then the value's.
		size, n := uvarintPrefix(fields[1:])
		pair := fields[1+n : 1+n+size]
		fields = fields[1+n+size:]
		size, n = uvarintPrefix(pair[1:])
		name := pair[1+n : 1+n+size]
		pair = pair[1+n+size:]
		size, n = uvarintPrefix(pair[1:])
		b, open = appendLabel(b, open, name, pair[1+n:1+n+size], esc)
	}
	return b, open
}

// uvarintPrefix decodes the length at the start of b, which the relay
// checked or wrote, and returns it and its size.
func uvarintPrefix[S string | []byte](b S) (int, int) {
	v := 0
	for i := 0; i < len(b); i++ {
		v |= int(b[i]&0x7f) << (7 * i)
		if b[i] < 0x80 {
			return v, i + 1
		}
	}
	return v, len(b)
}

// scanMetric checks that metric mb is in the form the stream path takes:
// label pairs of a name and a value, then the value field of the family's
// type holding only a value, then perhaps a timestamp, each as
// proto.Marshal writes it; and, when labels is set, that it passes
// validateMetric's checks (names set, unique, UTF-8, not __name__; values
// UTF-8), with names in the legacy form when legacy is set (see
// checkLabels). It also works out decodedSize, without the labels' share
// when labels is not set.
func (s *pbStream) scanMetric(mb []byte, value protowire.Number, legacy, labels bool) (pbMetricShape, bool) {
	shape := pbMetricShape{size: sizeMessage + len(mb), labelAt: -1}
	s.names = s.names[:0]
	seenValue, seenTimestamp, taken := false, false, false
	for b := mb; len(b) > 0; {
		start := len(mb) - len(b)
		// Every field the stream path takes has a one-byte tag.
		num, typ := protowire.DecodeTag(uint64(b[0]))
		if b[0] >= 0x80 {
			return shape, false
		}
		b = b[1:]
		switch {
		case num == 1 && typ == protowire.BytesType && !seenValue:
			v, n := consumeMinimalBytes(b)
			if n < 0 || labels && !s.checkLabel(v, start, legacy, &shape, &taken) {
				return shape, false
			}
			b = b[n:]
			shape.labelsEnd = len(mb) - len(b)
		case num == value && typ == protowire.BytesType && !seenValue:
			v, n := consumeMinimalBytes(b)
			// Only field 1, the value, as a double.
			if n < 0 || len(v) != 9 || v[0] != 0x09 {
				return shape, false
			}
			shape.size += sizeField + sizeMessage + len(v) + sizeField
			b = b[n:]
			seenValue = true
		case num == 6 && typ == protowire.VarintType && seenValue && !seenTimestamp:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 || n != protowire.SizeVarint(v) {
				return shape, false
			}
			shape.size += sizeField
			b = b[n:]
			seenTimestamp = true
		default:
			return shape, false
		}
	}
	if labels && s.label != "" && !taken && shape.labelAt < 0 {
		shape.labelAt = shape.labelsEnd
	}
	return shape, seenValue
}

// checkLabels makes the checks of the label fields of a metric that
// scanMetric skipped when its labels was not set, and adds their share of
// decodedSize to the shape.
func (s *pbStream) checkLabels(fields []byte, legacy bool, shape *pbMetricShape) bool {
	s.names = s.names[:0]
	taken := false
	for b := fields; len(b) > 0; {
		// scanMetric checked the tag and the length.
		start := len(fields) - len(b)
		v, n := consumeMinimalBytes(b[1:])
		if !s.checkLabel(v, start, legacy, shape, &taken) {
			return false
		}
		b = b[1+n:]
	}
	if s.label != "" && !taken && shape.labelAt < 0 {
		shape.labelAt = len(fields)
	}
	return true
}

// checkLabel checks label field v of a metric, at start among its fields:
// a pair as proto.Marshal writes it that passes validLabel. It adds the
// label's share of decodedSize to the shape and notes where the exporter
// label goes (pbMetricShape.labelAt; taken says a label has its name).
func (s *pbStream) checkLabel(v []byte, start int, legacy bool, shape *pbMetricShape, taken *bool) bool {
	name, val, ok := scanLabelPair(v)
	if !ok || !s.validLabel(name, val, legacy) {
		return false
	}
	s.names = append(s.names, name)
	if s.label != "" && !*taken {
		if string(name) == s.label {
			*taken, shape.labelAt = true, -1
		} else if shape.labelAt < 0 && string(name) >= s.label {
			shape.labelAt = start
		}
	}
	shape.size += sizeField + sizeMessage + len(v) + 2*sizeString + sizePacked*(len(name)+len(val))
	return true
}

// validLabel checks a label of a metric as validateMetric does, and that
// its name was not seen before in the metric; names must be in the legacy
// form when legacy is set.
func (s *pbStream) validLabel(name, value []byte, legacy bool) bool {
	if string(name) == model.MetricNameLabel {
		return false
	}
	// A legacy name is ASCII without NUL bytes.
	if legacy && !isLegacyName(name, false) || !legacy && (len(name) == 0 || !validBytes(name, s.text)) {
		return false
	}
	if !validBytes(value, s.text) {
		return false
	}
	if len(s.names) >= 16 {
		return false // rare; protobufFamily checks with a map
	}
	for _, n := range s.names {
		if string(n) == string(name) {
			return false
		}
	}
	return true
}

// validBytes is validString for bytes: UTF-8, and without NUL bytes when
// text is set, which the text formats cannot carry. ASCII, what most
// label values are, is checked in one pass.
func validBytes(b []byte, text bool) bool {
	for i, c := range b {
		if c >= utf8.RuneSelf {
			return utf8.Valid(b[i:]) && (!text || bytes.IndexByte(b[i:], 0) < 0)
		}
		if c == 0 && text {
			return false
		}
	}
	return true
}

// scanLabelPair reads a LabelPair written by proto.Marshal with both its
// fields set.
func scanLabelPair(b []byte) (name, value []byte, ok bool) {
	if len(b) == 0 || b[0] != 0x0a {
		return nil, nil, false
	}
	name, n := consumeMinimalBytes(b[1:])
	if n < 0 {
		return nil, nil, false
	}
	b = b[1+n:]
	if len(b) == 0 || b[0] != 0x12 {
		return nil, nil, false
	}
	value, n = consumeMinimalBytes(b[1:])
	if n < 0 || 1+n != len(b) {
		return nil, nil, false
	}
	return name, value, true
}

// consumeMinimalBytes is protowire.ConsumeBytes for a length that
// proto.Marshal would have written the same way.
func consumeMinimalBytes(b []byte) ([]byte, int) {
	v, n := protowire.ConsumeBytes(b)
	if n < 0 || n != protowire.SizeBytes(len(v)) {
		return nil, -1
	}
	return v, n
}

// appendLabelPair appends a Metric's label field.
func appendLabelPair(b []byte, name, value string) []byte {
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendVarint(b, uint64(protowire.SizeTag(1)+protowire.SizeBytes(len(name))+protowire.SizeTag(2)+protowire.SizeBytes(len(value))))
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendString(b, name)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	return protowire.AppendString(b, value)
}

// streamLabels sets s.labelBytes and the others to the label fields that
// the label fields of metric mb of family h (its first labelsEnd bytes)
// become, and reports whether the metric is kept, and
// false for ok when protobufFamily must relay the family. It counts the
// metric's sample when it is kept.
func (p *pipeline) streamLabels(h *pbHeader, mb []byte, shape pbMetricShape, e *seriesEntry, written string) (keep, ok bool, err error) {
	s := &p.pbStream
	raw := mb[:shape.labelsEnd]
	s.labelBytes, s.labelPair, s.labelAfter, s.labelText, s.series = nil, nil, nil, "", ""
	if len(p.relabels) == 0 {
		if p.label == "" {
			s.labelBytes = raw
			p.samples++
			return true, true, nil
		}
		if at := shape.labelAt; at >= 0 && (p.escaping == model.NoEscaping || isLegacyName(p.label, false)) {
			// As addLabelPair: the exporter label among the others, in
			// name order, written with them rather than copied first.
			s.labelBytes, s.labelPair, s.labelAfter = raw[:at], p.labelField, raw[at:]
			p.samples++
			return true, true, nil
		}
	}
	if e != nil {
		if e.dropped {
			return false, true, nil
		}
		if s.text {
			s.series = written
		} else {
			s.labelText = written
		}
		p.samples++
		return true, true, nil
	}
	return p.streamMiss(h, mb, shape.labelsSize)
}

// cachedLabels looks metric mb up in the series cache by its label fields,
// which scanMetric delimited but did not check, and adds their share of
// decodedSize to the shape: remembered on a hit, worked out by checking
// them on a miss. On a hit it returns the entry and what the metric is
// written as; it reports false when the labels fail the checks. An entry
// is only filed after its label fields passed the checks, under a key that
// holds everything the checks depend on: the label fields, the spelling of
// names (legacy) and whether the output is text.
func (p *pipeline) cachedLabels(h *pbHeader, mb []byte, shape *pbMetricShape, legacy bool) (*seriesEntry, string, bool) {
	s := &p.pbStream
	raw := mb[:shape.labelsEnd]
	if e := p.cache.lookupProtobuf(h.name, h.typ, p.escaping, s.text, raw); e != nil {
		size, written := e.sizedValue()
		shape.size += size
		return e, written, true
	}
	size := shape.size
	if !s.checkLabels(raw, legacy, shape) {
		return nil, "", false
	}
	shape.labelsSize = shape.size - size
	return nil, "", true
}

// streamMiss relabels metric mb, which the cache does not know, as
// protobufFamily does, and remembers the outcome with its labels' share of
// decodedSize.
func (p *pipeline) streamMiss(h *pbHeader, mb []byte, labelsSize int) (keep, ok bool, err error) {
	s := &p.pbStream
	pt := &p.protobufPart
	if !s.missPart {
		pt.reset(h)
		s.missPart = true
	}
	// A metric a rule renames is written as a metric family of its own,
	// value and all.
	m := &dto.Metric{}
	if err := proto.Unmarshal(mb, m); err != nil {
		return false, false, fmt.Errorf("%w: family %q: %w", errParse, truncate(h.name), err) // scanMetric checked it
	}
	moved := pt.movedMetrics()
	if err := p.protobufMetric(h, m); err != nil {
		return false, false, err
	}
	defer func() { pt.fam.Metric = pt.fam.Metric[:0] }()
	if pt.movedMetrics() != moved {
		// Renamed: a family of its own, written after the part
		// (endStreamPart), and not remembered.
		if s.direct {
			return false, true, nil
		}
		pt.moved.reset()
		pt.loose.reset()
		return false, false, nil
	}
	if len(pt.fam.Metric) == 0 {
		if p.cache != nil {
			p.cacheValue = appendSizedValue(p.cacheValue[:0], labelsSize, nil)
			p.cache.remember(true, p.cacheValue)
		}
		return false, true, nil
	}
	// As familyWriter writes the label pairs: names escaped as
	// escapeFamily escapes them.
	s.labels = s.labels[:0]
	for _, lp := range pt.fam.Metric[0].Label {
		if lp.Name == nil || lp.Value == nil {
			// Never so: every pair the relay makes has both. Were it
			// so, proto.Marshal would leave the field out.
			return false, false, errors.New("label pair without a name or value")
		}
		name := *lp.Name
		if p.escaping != model.NoEscaping && !isLegacyName(name, false) {
			name = escapeLabelName(name, p.escaping)
		}
		s.labels = appendLabelPair(s.labels, name, *lp.Value)
	}
	s.labelBytes = s.labels
	if p.cache != nil && s.text {
		// A scraper of text gets the series text remembered, which a
		// warm scrape copies as it is.
		s.seriesBuf = s.appendSeries(appendSizedValue(s.seriesBuf[:0], labelsSize, nil), h, p.escaping)
		p.cache.remember(false, s.seriesBuf)
	} else if p.cache != nil {
		p.cacheValue = appendSizedValue(p.cacheValue[:0], labelsSize, s.labels)
		p.cache.remember(false, p.cacheValue)
	}
	return true, true, nil
}

// movedMetrics counts the metrics of a part's moved and loose families.
func (pt *pbPart) movedMetrics() int {
	n := 0
	for _, f := range pt.moved.list {
		n += len(f.Metric)
	}
	for _, f := range pt.loose.list {
		n += len(f.Metric)
	}
	return n
}
