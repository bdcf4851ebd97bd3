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
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
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
		h, err := scanFamily(frame, p.familyFormat != FormatProtobuf)
		if err != nil {
			return fmt.Errorf("%w: %w", errParse, err)
		}
		if err := p.protobufFamily(frame, &h, emit); err != nil {
			p.protobufPart.reset(nil)
			return err
		}
	}
}

// scanFamily reads the fields of a MetricFamily other than its metrics and
// validates them (see validString). As in proto.Unmarshal, the last of a
// repeated scalar wins and a field with an unexpected wire type is skipped
// as unknown.
func scanFamily(frame []byte, text bool) (pbHeader, error) {
	var h pbHeader
	for b := frame; len(b) > 0; {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return h, protowire.ParseError(n)
		}
		b = b[n:]
		switch {
		case typ == protowire.BytesType && (num == fieldFamilyName || num == fieldFamilyHelp || num == fieldFamilyUnit):
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return h, protowire.ParseError(n)
			}
			s := string(v)
			switch num {
			case fieldFamilyName:
				h.name = s
			case fieldFamilyHelp:
				h.help = &s
			default:
				h.unit = &s
			}
			b = b[n:]
		case typ == protowire.VarintType && num == fieldFamilyType:
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return h, protowire.ParseError(n)
			}
			h.typ = dto.MetricType(int32(v))
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return h, protowire.ParseError(n)
			}
			b = b[n:]
		}
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

// protobufFamily decodes, validates and relabels the metrics of one frame,
// emitting them in parts.
func (p *pipeline) protobufFamily(frame []byte, h *pbHeader, emit func(*dto.MetricFamily) error) error {
	p.protobufPart.reset(h)
	for b := frame; len(b) > 0; {
		// scanFamily walked these fields already: they are well-formed.
		num, typ, n := protowire.ConsumeTag(b)
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		field := b[:n]
		b = b[n:]
		if num != fieldFamilyMetric || typ != protowire.BytesType {
			continue
		}
		mb, _ := protowire.ConsumeBytes(field)
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

// validateMetric refuses what would make the encoders write something
// Prometheus refuses or reads differently: every metric carries the value
// of its family's type; label names are set, unique, UTF-8 and neither
// __name__ nor the le or quantile of the series the metric stands for;
// label values and exemplar labels are UTF-8 and, for the text formats,
// without NUL bytes (see validString).
func validateMetric(typ dto.MetricType, m *dto.Metric, text bool) error {
	magic := ""
	switch typ {
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		magic = model.BucketLabel
	case dto.MetricType_SUMMARY:
		magic = model.QuantileLabel
	}
	for _, l := range m.Label {
		name := l.GetName()
		switch {
		case name == "" || !validString(name, text) || !validString(l.GetValue(), text):
			return errors.New("label without a valid name or with a value that is not UTF-8 or has a NUL byte")
		case name == model.MetricNameLabel:
			return errors.New("metric with a __name__ label")
		case name == magic:
			return fmt.Errorf("%s metric with a label %q", strings.ToLower(typ.String()), magic)
		}
	}
	if dup := duplicateName(m.Label); dup != "" {
		return fmt.Errorf("metric with label %q repeated", truncate(dup))
	}
	var ok bool
	switch typ {
	case dto.MetricType_COUNTER:
		ok = m.Counter != nil && validExemplar(m.Counter.Exemplar, text)
	case dto.MetricType_GAUGE:
		ok = m.Gauge != nil
	case dto.MetricType_SUMMARY:
		ok = m.Summary != nil
	case dto.MetricType_UNTYPED:
		ok = m.Untyped != nil
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		ok = m.Histogram != nil
		for _, b := range m.Histogram.GetBucket() {
			ok = ok && validExemplar(b.Exemplar, text)
		}
		for _, e := range m.Histogram.GetExemplars() {
			ok = ok && validExemplar(e, text)
		}
		if ok && isNative(m.Histogram) {
			if err := validateSpans(m.Histogram); err != nil {
				return err
			}
		}
	}
	if !ok {
		return fmt.Errorf("metric without a %s value or with an invalid exemplar", typ)
	}
	return nil
}

// validateSpans checks that the spans of a native histogram describe as
// many buckets as it has (deltas, or counts for a float histogram), which
// Prometheus' parser insists on.
func validateSpans(h *dto.Histogram) error {
	float := h.GetSampleCountFloat() > 0 || h.GetZeroCountFloat() > 0 || len(h.PositiveCount) > 0 || len(h.NegativeCount) > 0
	sides := []struct {
		name    string
		spans   []*dto.BucketSpan
		buckets int
	}{
		{"positive", h.PositiveSpan, len(h.PositiveDelta)},
		{"negative", h.NegativeSpan, len(h.NegativeDelta)},
	}
	if float {
		sides[0].buckets, sides[1].buckets = len(h.PositiveCount), len(h.NegativeCount)
	}
	for _, side := range sides {
		n := 0
		for _, s := range side.spans {
			n += int(s.GetLength())
		}
		if n != side.buckets {
			return fmt.Errorf("native histogram whose %s spans cover %d buckets, not its %d", side.name, n, side.buckets)
		}
	}
	return nil
}

func validExemplar(e *dto.Exemplar, text bool) bool {
	if e == nil {
		return true
	}
	for _, l := range e.Label {
		if l.GetName() == "" || !validString(l.GetName(), text) || !validString(l.GetValue(), text) {
			return false
		}
	}
	return duplicateName(e.Label) == ""
}

// validString reports whether s is UTF-8 and, when it goes into a text
// format, free of NUL bytes: Prometheus' text parsers stop at one even in a
// quoted string, so no escaping could carry it.
func validString(s string, text bool) bool {
	return utf8.ValidString(s) && (!text || strings.IndexByte(s, 0) < 0)
}

// duplicateName returns a label name that occurs twice, "" if none does.
func duplicateName(pairs []*dto.LabelPair) string {
	if len(pairs) <= 16 {
		for i := 1; i < len(pairs); i++ {
			for j := 0; j < i; j++ {
				if pairs[i].GetName() == pairs[j].GetName() {
					return pairs[i].GetName()
				}
			}
		}
		return ""
	}
	seen := make(map[string]struct{}, len(pairs))
	for _, l := range pairs {
		if _, ok := seen[l.GetName()]; ok {
			return l.GetName()
		}
		seen[l.GetName()] = struct{}{}
	}
	return ""
}

// msgKind is a message type of client_model, for decodedSize.
type msgKind int

const (
	msgOther msgKind = iota
	msgMetric
	msgCounter
	msgSummary
	msgHistogram
	msgBucket
	msgExemplar
)

// Heap bytes proto.Unmarshal spends on a message beyond its wire bytes,
// rounded up from the sizes of the Go structs with their pointer fields
// and slice slots.
const (
	sizeMessage = 96 // a message struct, its pointer and allocation rounding
	sizeField   = 16 // a pointer to a scalar, or a slice slot
	sizePacked  = 8  // per byte of a packed repeated field (an int64 per varint byte at most)
	sizeString  = 24 // a string's header and the pointer to it
)

// decodedSize estimates the memory proto.Unmarshal takes for message b of
// kind k, from its wire encoding, without decoding it: the wire bytes
// (strings and unknown fields are copied) plus the cost of every message,
// field and slice element. It is an upper estimate for client_model
// messages and bounds hostile ones: each field costs at least its tag byte.
// Only known message fields are walked into, so the recursion is as deep as
// client_model's messages nest (four).
func decodedSize(b []byte, k msgKind) (int, error) {
	size := sizeMessage + len(b)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		field := b[:n]
		b = b[n:]
		if typ != protowire.BytesType {
			size += sizeField
			continue
		}
		v, _ := protowire.ConsumeBytes(field)
		child := childKind(k, num)
		if child < 0 {
			// A string, a packed repeated scalar or an unknown field.
			size += sizeString + sizePacked*len(v)
			continue
		}
		c, err := decodedSize(v, child)
		if err != nil {
			return 0, err
		}
		size += sizeField + c
	}
	return size, nil
}

// childKind is the kind of message field num of a k holds, -1 for a field
// that is not a message.
func childKind(k msgKind, num protowire.Number) msgKind {
	switch k {
	case msgMetric:
		switch num {
		case 1, 2, 5: // label, gauge, untyped
			return msgOther
		case 3:
			return msgCounter
		case 4:
			return msgSummary
		case 7:
			return msgHistogram
		}
	case msgCounter:
		switch num {
		case 2:
			return msgExemplar
		case 3:
			return msgOther // created timestamp
		}
	case msgSummary:
		if num == 3 || num == 4 { // quantile, created timestamp
			return msgOther
		}
	case msgHistogram:
		switch num {
		case 3:
			return msgBucket
		case 9, 12, 15: // spans, created timestamp
			return msgOther
		case 16:
			return msgExemplar
		}
	case msgBucket:
		if num == 3 {
			return msgExemplar
		}
	case msgExemplar:
		if num == 1 || num == 3 { // label, timestamp
			return msgOther
		}
	}
	return -1
}

// pbPart is a part of a protobuf family: its relabeled metrics, families
// relabeling moved whole metrics into, and series relayed on their own.
type pbPart struct {
	fam   *dto.MetricFamily
	h     *pbHeader
	moved familySet
	loose familySet
	size  int
}

func (pt *pbPart) reset(h *pbHeader) {
	pt.h, pt.size = h, 0
	pt.fam = nil
	if h != nil {
		pt.fam = &dto.MetricFamily{Name: proto.String(h.name), Help: h.help, Type: h.typ.Enum(), Unit: h.unit}
	}
	pt.moved.reset()
	pt.loose.reset()
}

// emit hands the part on and begins the next one.
func (pt *pbPart) emit(emit func(*dto.MetricFamily) error) error {
	fams := append([]*dto.MetricFamily{pt.fam}, pt.moved.list...)
	fams = append(fams, pt.loose.list...)
	h := pt.h
	for _, f := range fams {
		if err := emit(f); err != nil {
			return err
		}
	}
	pt.reset(h)
	return nil
}

// place files a relabeled metric under the family its name says.
func (pt *pbPart) place(name string, m *dto.Metric) {
	if name == pt.h.name {
		pt.fam.Metric = append(pt.fam.Metric, m)
		return
	}
	h := pt.h
	f := pt.moved.get(name, func() *dto.MetricFamily {
		return &dto.MetricFamily{Name: proto.String(name), Help: h.help, Type: h.typ.Enum(), Unit: h.unit}
	})
	f.Metric = append(f.Metric, m)
}

// protobufMetric relabels one metric into the current part. A metric of a
// single series (counter, gauge, untyped) and a native histogram are
// relabeled as a unit under the family's name, as Prometheus does; a
// metric renamed by a rule moves to a family of that name. Summaries and
// classic histograms go series by series (protobufClassic).
func (p *pipeline) protobufMetric(h *pbHeader, m *dto.Metric) error {
	if h.typ == dto.MetricType_GAUGE_HISTOGRAM && p.familyFormat != FormatProtobuf && classic(h.typ, m) {
		// The text formats name a gauge histogram's count and sum _gcount
		// and _gsum, protobuf _count and _sum: relay the series.
		return p.protobufClassic(h, m, true)
	}
	if len(p.relabels) == 0 {
		p.samples += sampleCount(m)
		if p.label != "" {
			p.addLabelPair(h.name, m)
		}
		p.protobufPart.fam.Metric = append(p.protobufPart.fam.Metric, m)
		return nil
	}
	if p.fastRules != nil && p.protobufFast(h, m) {
		return nil
	}
	if classic(h.typ, m) {
		return p.protobufClassic(h, m, false)
	}
	out, keep, err := p.relabel(p.metricLabels(h.name, m))
	if !keep {
		return err
	}
	p.samples += sampleCount(m)
	m.Label = labelPairs(out, "")
	p.protobufPart.place(out.Get(model.MetricNameLabel), m)
	return nil
}

// protobufFast applies rules of the fast form (see fastRules) to a metric
// without building label sets: the name rules decide on the names of its
// series, the constant labels are added as shared pairs. It reports false,
// having done nothing, where the general path must decide: the metric has
// a label of a name the rules or the exporter label set, its names are not
// valid in the legacy scheme that the general path would check, or name
// rules keep only some series of a summary or histogram.
func (p *pipeline) protobufFast(h *pbHeader, m *dto.Metric) bool {
	f := p.fastRules
	for _, l := range m.Label {
		for _, n := range f.set {
			if l.GetName() == string(n) {
				return false
			}
		}
	}
	if p.scheme == model.LegacyValidation {
		if !isLegacyName(h.name, true) {
			return false
		}
		for _, l := range m.Label {
			if !isLegacyName(l.GetName(), false) {
				return false
			}
		}
	}
	if !h.keepSet {
		for i, suffix := range [...]string{"", "_bucket", "_sum", "_count"} {
			h.keep[i] = f.keepName([]byte(h.name + suffix))
		}
		h.keepSet = true
	}
	native := m.Histogram != nil && isNative(m.Histogram)
	keepAll := h.keep[0]
	if classic(h.typ, m) {
		series := h.keep[0] // quantiles
		if m.Histogram != nil {
			series = h.keep[1]
		}
		keepAll = series && h.keep[2] && h.keep[3] && (!native || h.keep[0])
		switch {
		case keepAll:
		case native && h.keep[0]:
			// The native part survives alone, as in protobufClassic.
			m.Histogram.Bucket = nil
		case !series && !h.keep[2] && !h.keep[3] && (!native || !h.keep[0]):
			return true // dropped whole
		default:
			return false
		}
	} else if !keepAll {
		return true
	}
	p.samples += sampleCount(m)
	if p.label != "" {
		p.addLabelPair(h.name, m)
	}
	m.Label = append(m.Label, f.pairs...)
	p.protobufPart.fam.Metric = append(p.protobufPart.fam.Metric, m)
	return true
}

// addLabelPair adds the exporter label to a metric, building its label set
// only in the rare case that it has a label of that name already.
func (p *pipeline) addLabelPair(name string, m *dto.Metric) {
	for _, l := range m.Label {
		if l.GetName() == p.label {
			out, _, _ := p.relabel(p.metricLabels(name, m))
			m.Label = labelPairs(out, "")
			return
		}
	}
	// Keep the pairs sorted by name, as client libraries write them.
	i := 0
	for i < len(m.Label) && m.Label[i].GetName() < p.label {
		i++
	}
	m.Label = append(m.Label, nil)
	copy(m.Label[i+1:], m.Label[i:])
	m.Label[i] = p.exporterPair
}

// classic reports whether a metric is read by Prometheus as several series:
// a summary, or a histogram with classic buckets or without a native part.
func classic(typ dto.MetricType, m *dto.Metric) bool {
	switch typ {
	case dto.MetricType_SUMMARY:
		return true
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		return len(m.Histogram.GetBucket()) > 0 || !isNative(m.Histogram)
	}
	return false
}

// isNative is Prometheus' test for a native histogram: any span, a zero
// threshold or a zero count.
func isNative(h *dto.Histogram) bool {
	return len(h.GetPositiveSpan()) > 0 || len(h.GetNegativeSpan()) > 0 || h.GetZeroThreshold() > 0 || h.GetZeroCount() > 0
}

// part is one series of a summary or classic histogram, as Prometheus'
// protobuf parser reads it: the quantiles or buckets (with an +Inf bucket
// of the count when the last bucket is not +Inf, and none after an +Inf
// one), _sum and _count.
type part struct {
	suffix string // "", _bucket, _sum, _count
	magic  string // the value of le or quantile, "" for _sum and _count
	value  float64
	out    labels.Labels
	keep   bool
}

// protobufClassic relabels a summary or classic histogram series by
// series, as Prometheus does. When every series survives with the same
// labels apart from le or quantile, and with the family name (or one new
// name) and the suffixes intact, the metric stays whole, under its new
// labels and name. Otherwise the surviving series are relayed on their own,
// as untyped samples: the format cannot hold part of a histogram, and a
// histogram of only the surviving series would read back with series that
// were not there (an +Inf bucket, a zero _sum). Exemplars and created
// timestamps go with the metric when it is split.
//
// A histogram with both a native and a classic part follows its native part
// where the two disagree: the native part is relabeled as a unit under the
// family's name, as Prometheus does with native histograms, and when the
// classic series do not end up as the same metric the native part is
// relayed alone (its classic buckets dropped) if it survives, and the
// classic series only if it does not. So a rule dropping x_bucket keeps the
// native histogram, and the two never overlap.
//
// split relays the series on their own in any case.
func (p *pipeline) protobufClassic(h *pbHeader, m *dto.Metric, split bool) error {
	name := h.name
	base := p.metricLabels(name, m)
	magicName := model.BucketLabel
	parts := p.classicParts[:0]
	if s := m.Summary; s != nil {
		magicName = model.QuantileLabel
		for _, q := range s.GetQuantile() {
			parts = append(parts, part{suffix: "", magic: labels.FormatOpenMetricsFloat(q.GetQuantile()), value: q.GetValue()})
		}
		parts = append(parts, part{suffix: "_sum", value: s.GetSampleSum()}, part{suffix: "_count", value: float64(s.GetSampleCount())})
	} else {
		hist := m.Histogram
		inf := false
		for _, b := range hist.GetBucket() {
			parts = append(parts, part{suffix: "_bucket", magic: labels.FormatOpenMetricsFloat(b.GetUpperBound()), value: bucketCount(b)})
			if math.IsInf(b.GetUpperBound(), 1) {
				inf = true
				break
			}
		}
		if !inf {
			parts = append(parts, part{suffix: "_bucket", magic: "+Inf", value: histogramCount(hist)})
		}
		parts = append(parts, part{suffix: "_sum", value: hist.GetSampleSum()}, part{suffix: "_count", value: histogramCount(hist)})
	}
	p.classicParts = parts

	whole := !split
	var newName string
	var group labels.Labels
	for i := range parts {
		c := &parts[i]
		p.classicBuilder.Reset(base)
		p.classicBuilder.Set(model.MetricNameLabel, name+c.suffix)
		if c.magic != "" {
			p.classicBuilder.Set(magicName, c.magic)
		}
		out, keep, err := p.relabel(p.classicBuilder.Labels())
		if err != nil {
			return err
		}
		c.out, c.keep = out, keep
		if !keep {
			whole = false
		}
		if !whole {
			continue
		}
		b, ok := strings.CutSuffix(out.Get(model.MetricNameLabel), c.suffix)
		p.classicBuilder.Reset(out)
		p.classicBuilder.Del(model.MetricNameLabel, magicName)
		g := p.classicBuilder.Labels()
		switch {
		case !ok || out.Get(magicName) != c.magic:
			whole = false
		case i == 0:
			newName, group = b, g
		case b != newName || !labels.Equal(g, group):
			whole = false
		}
	}

	native := !split && m.Histogram != nil && isNative(m.Histogram)
	var nativeOut labels.Labels
	nativeKeep := false
	if native {
		out, keep, err := p.relabel(base)
		if err != nil {
			return err
		}
		nativeOut, nativeKeep = out, keep
	}
	switch {
	case whole && (!native || !nativeKeep):
		if native {
			clearNative(m.Histogram)
		}
		p.samples += len(parts)
		m.Label = labelPairs(group, "")
		p.protobufPart.place(newName, m)
	case whole && nativeOut.Get(model.MetricNameLabel) == newName && labels.Equal(nativeOut.DropReserved(func(n string) bool { return n == model.MetricNameLabel }), group):
		p.samples += len(parts) + 1
		m.Label = labelPairs(group, "")
		p.protobufPart.place(newName, m)
	case native && nativeKeep:
		m.Histogram.Bucket = nil
		p.samples++
		m.Label = labelPairs(nativeOut, "")
		p.protobufPart.place(nativeOut.Get(model.MetricNameLabel), m)
	default:
		for _, c := range parts {
			if c.keep {
				p.samples++
				addLoose(&p.protobufPart.loose, c.out, c.value, m.GetTimestampMs(), m.GetTimestampMs() != 0)
			}
		}
	}
	clear(parts) // let go of the label sets
	return nil
}

// clearNative leaves only the classic part of a histogram.
func clearNative(h *dto.Histogram) {
	h.Schema, h.ZeroThreshold, h.ZeroCount, h.ZeroCountFloat = nil, nil, nil, nil
	h.NegativeSpan, h.NegativeDelta, h.NegativeCount = nil, nil, nil
	h.PositiveSpan, h.PositiveDelta, h.PositiveCount = nil, nil, nil
	h.Exemplars = nil
}

// metricLabels is the label set of a protobuf metric under name.
func (p *pipeline) metricLabels(name string, m *dto.Metric) labels.Labels {
	p.metricScratch.Reset()
	p.metricScratch.Add(model.MetricNameLabel, name)
	for _, l := range m.Label {
		p.metricScratch.Add(l.GetName(), l.GetValue())
	}
	p.metricScratch.Sort()
	return p.metricScratch.Labels()
}

// sampleCount is how many series a metric stands for, for the samples
// metric: buckets, quantiles, sum and count included.
func sampleCount(m *dto.Metric) int {
	switch {
	case m.Histogram != nil:
		if len(m.Histogram.Bucket) == 0 && isNative(m.Histogram) {
			return 1
		}
		// The buckets Prometheus reads (up to the first +Inf one, which
		// is added when missing), _sum and _count, and a native part.
		n := 2
		if isNative(m.Histogram) {
			n++
		}
		for _, b := range m.Histogram.Bucket {
			n++
			if math.IsInf(b.GetUpperBound(), 1) {
				return n
			}
		}
		return n + 1
	case m.Summary != nil:
		return len(m.Summary.Quantile) + 2
	}
	return 1
}
