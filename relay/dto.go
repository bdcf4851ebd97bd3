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
	"encoding/binary"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// assembler turns the relabeled series of a text or OpenMetrics stream
// into client_model families, grouping the series of summaries and
// classic histograms into metrics, and emits each family when the next one
// begins or the chunk ends. Only one family is held at a time.
//
// A summary or histogram metric is only emitted as one structured metric
// when that reads back as exactly the series that came in: one _sum, one
// _count, a last bucket of +Inf, one timestamp, le and quantile values as
// the encoders spell them, a summary count that is an integer, and for a
// gauge histogram an output other than protobuf. Otherwise,
// typically because relabeling dropped or changed some of its series, its
// series are emitted one by one as untyped bare families (see isBare), so
// that no series appears that was not there (an +Inf bucket, a _sum of 0)
// and none is lost.
type assembler struct {
	om   bool
	emit func(*dto.MetricFamily) error
	// splitGauge splits every gauge histogram into its series: protobuf
	// names their _gcount and _gsum series _count and _sum.
	splitGauge bool

	name  string // the family's name in its metadata, or its first sample's
	fname string // the name client_model uses (counters end in _total)
	help  *string
	unit  *string
	typ   model.MetricType
	fam   *dto.MetricFamily
	// counters maps the label set of an OpenMetrics counter to its metric,
	// for its _created series.
	counters map[string]*dto.Metric
	// groups maps a label set without le or quantile to the summary or
	// histogram metric its series build; order keeps their first appearance.
	groups map[string]*group
	order  []*group
	loose  familySet
	key    []byte

	// wire, when set, is the writer of protobuf output that the metrics
	// of counter, gauge and untyped families of text input are written to
	// as wire bytes, without client_model messages (appendWireMetric):
	// wireBody holds the family's metrics, wireMetrics counts them, frame
	// is scratch for its frame. The aggregate endpoint and the tests that
	// compare both paths leave it nil.
	wire        *familyWriter
	wireBody    []byte
	wireMetrics int
	frame       []byte
	// mark is the mark of frame, for a writer that takes the frames
	// marked.
	mark [1]frameMark
	// wireLabels is the label fields of the metric sample wrote last as
	// wire bytes, nil when it wrote none: the series cache keeps them.
	wireLabels []byte
	// wired counts the frames written so, for the tests.
	wired int
	// withLabel says the metric at hand is to get the exporter label,
	// named label, whose field is labelField, among its label fields
	// (pipeline.wireLabel); labeled counts the metrics written so, for the
	// tests.
	withLabel  bool
	label      string
	labelField []byte
	labeled    int
}

// group is one summary or classic histogram metric being assembled, with
// its series as they came, in case it cannot be emitted structured.
type group struct {
	m      *dto.Metric
	series []looseSeries
	ts     int64
	hasTS  bool
	// What reading m back would not reproduce.
	bad           bool
	sums, counts  int
	buckets, infs int
	lastIsInf     bool
}

type looseSeries struct {
	lset  labels.Labels
	v     float64
	ts    int64
	hasTS bool
}

func (a *assembler) reset(om, splitGauge bool, emit func(*dto.MetricFamily) error) {
	a.om, a.splitGauge, a.emit = om, splitGauge, emit
	a.clear()
	// A scrape that failed halfway may have left split series behind.
	a.loose.reset()
}

func (a *assembler) clear() {
	a.name, a.fname, a.help, a.unit, a.typ, a.fam = "", "", nil, nil, model.MetricTypeUnknown, nil
	a.wireBody, a.wireMetrics = a.wireBody[:0], 0
	clear(a.counters)
	clear(a.groups)
	clear(a.order)
	a.order = a.order[:0]
}

// start begins a family.
func (a *assembler) start(name string, typ model.MetricType) {
	a.clear()
	a.name, a.typ = name, typ
	a.fname = name
}

// setType fixes the family's type and its client_model name: OpenMetrics
// names a counter family without _total and an info family without _info,
// client_model with them.
func (a *assembler) setType(typ model.MetricType) {
	a.typ = typ
	a.fname = a.name
	if !a.om {
		return
	}
	switch typ {
	case model.MetricTypeCounter:
		if !strings.HasSuffix(a.name, "_total") {
			a.fname = a.name + "_total"
		}
	case model.MetricTypeInfo:
		if !strings.HasSuffix(a.name, "_info") {
			a.fname = a.name + "_info"
		}
	}
}

func (a *assembler) meta(kind metaKind, name, value []byte, typ model.MetricType) error {
	if string(name) != a.name || a.fam != nil || a.wireMetrics > 0 {
		if err := a.flush(); err != nil {
			return err
		}
		a.start(string(name), model.MetricTypeUnknown)
	}
	switch kind {
	case metaHelp:
		a.help = proto.String(string(value))
	case metaType:
		a.setType(typ)
	case metaUnit:
		if len(value) > 0 {
			a.unit = proto.String(string(value))
		}
	}
	return nil
}

// complex reports whether the family's metrics are built from several
// series.
func (a *assembler) complex() bool {
	switch a.typ {
	case model.MetricTypeSummary, model.MetricTypeHistogram, model.MetricTypeGaugeHistogram:
		return true
	}
	return false
}

// flush emits the family held, if it has metrics, then the series split
// off its summaries and histograms, and forgets them.
func (a *assembler) flush() error {
	fam := a.fam
	if fam != nil && a.complex() {
		for _, g := range a.order {
			if a.whole(g) {
				fam.Metric = append(fam.Metric, g.m)
			} else {
				a.loosen(g)
			}
		}
	}
	if a.wireMetrics > 0 {
		a.frame, a.mark[0] = a.appendWireFamily(a.frame[:0])
	}
	wired := a.wireMetrics > 0
	loose := a.loose.list
	a.clear()
	if wired {
		a.wired++
		if err := a.wire.writeFrames(a.frame, a.mark[:]); err != nil {
			return err
		}
	}
	if fam != nil && len(fam.Metric) > 0 {
		if err := a.emit(fam); err != nil {
			return err
		}
	}
	for _, f := range loose {
		if err := a.emit(f); err != nil {
			return err
		}
	}
	a.loose.reset()
	return nil
}

// whole reports whether a group reads back as exactly its series.
func (a *assembler) whole(g *group) bool {
	if g.bad || g.sums != 1 || g.counts != 1 || a.splitGauge && a.typ == model.MetricTypeGaugeHistogram {
		return false
	}
	return a.typ == model.MetricTypeSummary || g.buckets > 0 && g.infs == 1 && g.lastIsInf
}

// loosen emits the series of a group as untyped bare families.
func (a *assembler) loosen(g *group) {
	for _, s := range g.series {
		addLoose(&a.loose, s.lset, s.v, s.ts, s.hasTS)
	}
}

// addLoose adds one series to the bare family of its name.
func addLoose(set *familySet, lset labels.Labels, v float64, ts int64, hasTS bool) {
	name := lset.Get(model.MetricNameLabel)
	f := set.get(name, func() *dto.MetricFamily {
		return &dto.MetricFamily{Name: proto.String(name), Type: dto.MetricType_UNTYPED.Enum()}
	})
	m := &dto.Metric{Label: labelPairs(lset, ""), Untyped: &dto.Untyped{Value: proto.Float64(v)}}
	if hasTS {
		m.TimestampMs = proto.Int64(ts)
	}
	f.Metric = append(f.Metric, m)
}

// familySet is an ordered set of families by name.
type familySet struct {
	list  []*dto.MetricFamily
	index map[string]int
}

func (s *familySet) get(name string, create func() *dto.MetricFamily) *dto.MetricFamily {
	if i, ok := s.index[name]; ok {
		return s.list[i]
	}
	if s.index == nil {
		s.index = make(map[string]int)
	}
	f := create()
	s.index[name] = len(s.list)
	s.list = append(s.list, f)
	return f
}

func (s *familySet) reset() {
	clear(s.list)
	s.list = s.list[:0]
	clear(s.index)
}

// suffix returns what name adds to the family name for a series of this
// family, and whether the series belongs to it.
func (a *assembler) suffix(name string) (string, bool) {
	if a.name == "" {
		return "", false
	}
	switch a.typ {
	case model.MetricTypeCounter, model.MetricTypeInfo:
		if name == a.fname {
			return "", true
		}
		if a.om && name == a.name+"_created" {
			return "_created", true
		}
		return "", false
	case model.MetricTypeSummary, model.MetricTypeHistogram, model.MetricTypeGaugeHistogram:
		s, ok := strings.CutPrefix(name, a.name)
		if !ok {
			return "", false
		}
		switch s {
		case "", "_sum", "_count", "_created":
			return s, s != "" || a.typ == model.MetricTypeSummary
		case "_bucket":
			return s, a.typ != model.MetricTypeSummary
		case "_gsum", "_gcount":
			return s, a.typ == model.MetricTypeGaugeHistogram
		}
		return "", false
	}
	return "", name == a.name
}

func (a *assembler) family() *dto.MetricFamily {
	if a.fam == nil {
		a.fam = &dto.MetricFamily{Name: proto.String(a.fname), Type: dtoType(a.typ).Enum(), Help: a.help, Unit: a.unit}
	}
	return a.fam
}

// sample adds one relabeled series.
func (a *assembler) sample(lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) error {
	name := lset.Get(model.MetricNameLabel)
	suffix, ok := a.suffix(name)
	if !ok {
		// Another family without metadata (or a series renamed by a
		// relabel rule): it becomes an untyped family of its own.
		if err := a.flush(); err != nil {
			return err
		}
		a.start(name, model.MetricTypeUnknown)
	}
	switch a.typ {
	case model.MetricTypeSummary, model.MetricTypeHistogram, model.MetricTypeGaugeHistogram:
		a.addComplex(suffix, lset, v, ts, ex)
		return nil
	case model.MetricTypeCounter:
		if a.om {
			a.groupKey(lset, "")
			if suffix == "_created" {
				if m := a.counters[string(a.key)]; m != nil {
					m.Counter.CreatedTimestamp = timestampFromSeconds(v)
				}
				return nil
			}
			m := a.simple(lset, v, ts, ex)
			if a.counters == nil {
				a.counters = make(map[string]*dto.Metric)
			}
			a.counters[string(a.key)] = m
			return nil
		}
	case model.MetricTypeInfo:
		if suffix == "_created" {
			return nil
		}
	}
	a.simple(lset, v, ts, ex)
	return nil
}

// simple adds a metric of a single-sample type.
func (a *assembler) simple(lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) *dto.Metric {
	if a.wire != nil && !a.om {
		// Text has no exemplars, and OpenMetrics counters are found
		// again by their _created series: those stay messages.
		a.appendWireMetric(lset, v, ts)
		return nil
	}
	m := &dto.Metric{Label: labelPairs(lset, "")}
	if ts != nil {
		m.TimestampMs = proto.Int64(*ts)
	}
	switch a.typ {
	case model.MetricTypeCounter:
		m.Counter = &dto.Counter{Value: proto.Float64(v), Exemplar: dtoExemplar(ex)}
	case model.MetricTypeGauge, model.MetricTypeInfo, model.MetricTypeStateset:
		m.Gauge = &dto.Gauge{Value: proto.Float64(v)}
	default:
		m.Untyped = &dto.Untyped{Value: proto.Float64(v)}
	}
	f := a.family()
	f.Metric = append(f.Metric, m)
	return m
}

// appendWireMetric adds a metric of a counter, gauge or untyped family as
// proto.Marshal writes the message simple builds, with label names escaped
// as escapeFamily escapes them.
func (a *assembler) appendWireMetric(lset labels.Labels, v float64, ts *int64) {
	start := len(a.wireBody)
	// The field's tag and a length of at most 5 bytes, set below.
	b := append(a.wireBody, 0, 0, 0, 0, 0, 0)
	esc := a.wire.esc
	label := a.withLabel
	lset.Range(func(l labels.Label) {
		// The exporter label in name order, as relabel would have put
		// it among the labels; the series has no label of its name.
		if label && l.Name > a.label {
			b, label = append(b, a.labelField...), false
		}
		// An empty name (the text parser takes `""="v"`) is left out,
		// as labelPairs leaves it out of the message.
		if l.Name != model.MetricNameLabel && l.Name != "" {
			b = appendLabelPair(b, escapeLabelName(l.Name, esc), l.Value)
		}
	})
	if label {
		b = append(b, a.labelField...)
	}
	if a.withLabel {
		a.labeled++
	}
	a.endWireMetric(b, start, v, ts)
}

// appendWireLabeled is appendWireMetric for a metric whose label fields
// are known already (from the series cache).
func (a *assembler) appendWireLabeled(labelFields string, v float64, ts *int64) {
	start := len(a.wireBody)
	b := append(append(a.wireBody, 0, 0, 0, 0, 0, 0), labelFields...)
	a.endWireMetric(b, start, v, ts)
}

// endWireMetric ends the metric that starts at start in b, six bytes of
// room for its tag and length and then its label fields, with its value
// and timestamp, and makes b the wireBody.
func (a *assembler) endWireMetric(b []byte, start int, v float64, ts *int64) {
	labelsLen := len(b) - start - 6
	field := protowire.Number(5)
	switch dtoType(a.typ) {
	case dto.MetricType_GAUGE:
		field = 2
	case dto.MetricType_COUNTER:
		field = 3
	}
	b = protowire.AppendTag(b, field, protowire.BytesType)
	b = protowire.AppendVarint(b, 9)
	b = protowire.AppendTag(b, 1, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, math.Float64bits(v))
	if ts != nil {
		b = protowire.AppendTag(b, 6, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(*ts))
	}
	// Move the metric back to right after its tag and minimal length.
	size := len(b) - start - 6
	head := protowire.AppendTag(b[start:start], fieldFamilyMetric, protowire.BytesType)
	head = protowire.AppendVarint(head, uint64(size))
	n := copy(b[start+len(head):], b[start+6:])
	a.wireBody = b[:start+len(head)+n]
	a.wireMetrics++
	a.wireLabels = a.wireBody[start+len(head) : start+len(head)+labelsLen]
}

// wiring reports whether metrics go out as wire bytes at all: protobuf
// output of text input.
func (a *assembler) wiring() bool { return a.wire != nil && !a.om }

// wires reports whether a series named name, which relabeling left as it
// came, goes out as wire bytes (appendWireMetric) after the series before
// it: then what it writes depends only on its label fields, value and
// timestamp, and sampleWire can write it from the series cache.
func (a *assembler) wires(name string) bool {
	if !a.wiring() {
		return false
	}
	suffix, ok := a.suffix(name)
	if !ok {
		return true // an untyped family of its own, see sample
	}
	switch a.typ {
	case model.MetricTypeSummary, model.MetricTypeHistogram, model.MetricTypeGaugeHistogram:
		return false
	case model.MetricTypeInfo:
		return suffix != "_created"
	}
	return true
}

// sampleWire is sample for a series that wires, from its name and label
// fields.
func (a *assembler) sampleWire(name, labelFields string, v float64, ts *int64) error {
	if _, ok := a.suffix(name); !ok {
		if err := a.flush(); err != nil {
			return err
		}
		a.start(name, model.MetricTypeUnknown)
	}
	a.appendWireLabeled(labelFields, v, ts)
	return nil
}

// appendWireFamily appends the frame of the family held, its metrics in
// wireBody, as familyWriter writes the MetricFamily flush would emit, and
// returns its mark, its places counted from the start of b.
func (a *assembler) appendWireFamily(b []byte) ([]byte, frameMark) {
	name := escapeMetricName(a.fname, a.wire.esc)
	typ := dtoType(a.typ)
	body := protowire.SizeTag(fieldFamilyName) + protowire.SizeBytes(len(name)) +
		protowire.SizeTag(fieldFamilyType) + protowire.SizeVarint(uint64(typ)) + len(a.wireBody)
	if a.help != nil {
		body += protowire.SizeTag(fieldFamilyHelp) + protowire.SizeBytes(len(*a.help))
	}
	if a.unit != nil {
		body += protowire.SizeTag(fieldFamilyUnit) + protowire.SizeBytes(len(*a.unit))
	}
	m := frameMark{start: len(b), typ: typ}
	b = protowire.AppendVarint(b, uint64(body))
	at := len(b) // the message's start
	m.body = at - m.start
	b = protowire.AppendTag(b, fieldFamilyName, protowire.BytesType)
	b = protowire.AppendString(b, name)
	m.name = [2]int{len(b) - at - len(name), len(b) - at}
	if a.help != nil {
		b = protowire.AppendTag(b, fieldFamilyHelp, protowire.BytesType)
		b = protowire.AppendString(b, *a.help)
		m.help = [2]int{len(b) - at - len(*a.help), len(b) - at}
	}
	b = protowire.AppendTag(b, fieldFamilyType, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(typ))
	m.metrics[0] = len(b) - at
	b = append(b, a.wireBody...)
	m.metrics[1] = len(b) - at
	if a.unit != nil {
		b = protowire.AppendTag(b, fieldFamilyUnit, protowire.BytesType)
		b = protowire.AppendString(b, *a.unit)
		m.unit = [2]int{len(b) - at - len(*a.unit), len(b) - at}
	}
	m.end = len(b) - m.start
	return b, m
}

// addComplex adds a series of a summary or histogram to its metric, and
// notes what would keep the metric from reading back as its series.
func (a *assembler) addComplex(suffix string, lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) {
	skip := ""
	switch suffix {
	case "":
		skip = model.QuantileLabel
	case "_bucket":
		skip = model.BucketLabel
	}
	a.groupKey(lset, skip)
	if a.groups == nil {
		a.groups = make(map[string]*group)
	}
	g, ok := a.groups[string(a.key)]
	if !ok {
		g = &group{m: &dto.Metric{Label: labelPairs(lset, skip)}}
		if a.typ == model.MetricTypeSummary {
			g.m.Summary = &dto.Summary{}
		} else {
			g.m.Histogram = &dto.Histogram{}
		}
		a.groups[string(a.key)] = g
		a.order = append(a.order, g)
		a.family()
	}
	m := g.m
	if suffix == "_created" {
		// Not a series of its own in the formats that carry it as a
		// created timestamp; dropped when the metric is split.
		created := timestampFromSeconds(v)
		if m.Summary != nil {
			m.Summary.CreatedTimestamp = created
		} else {
			m.Histogram.CreatedTimestamp = created
		}
		return
	}
	s := looseSeries{lset: lset, v: v}
	if ts != nil {
		s.ts, s.hasTS = *ts, true
	}
	if len(g.series) == 0 {
		g.ts, g.hasTS = s.ts, s.hasTS
		if ts != nil {
			m.TimestampMs = proto.Int64(*ts)
		}
	} else if s.hasTS != g.hasTS || s.ts != g.ts {
		g.bad = true
	}
	g.series = append(g.series, s)
	var bound float64
	if skip != "" {
		text := lset.Get(skip)
		b, err := strconv.ParseFloat(text, 64)
		// The encoders write bounds in OpenMetrics' spelling, which
		// Prometheus' parsers also normalize to; any other spelling is a
		// different label value.
		if err != nil || text != labels.FormatOpenMetricsFloat(b) {
			g.bad = true
			return
		}
		bound = b
	}
	gauge := a.typ == model.MetricTypeGaugeHistogram
	switch suffix {
	case "":
		m.Summary.Quantile = append(m.Summary.Quantile, &dto.Quantile{Quantile: proto.Float64(bound), Value: proto.Float64(v)})
	case "_bucket":
		if g.lastIsInf {
			g.bad = true // Prometheus reads no bucket after +Inf
		}
		b := &dto.Bucket{UpperBound: proto.Float64(bound), Exemplar: dtoExemplar(ex)}
		setCount(&b.CumulativeCount, &b.CumulativeCountFloat, v)
		m.Histogram.Bucket = append(m.Histogram.Bucket, b)
		g.buckets++
		g.lastIsInf = math.IsInf(bound, 1)
		if g.lastIsInf {
			g.infs++
		}
	case "_sum", "_gsum":
		g.sums++
		if m.Summary != nil {
			m.Summary.SampleSum = proto.Float64(v)
		} else {
			m.Histogram.SampleSum = proto.Float64(v)
			g.bad = g.bad || gauge != (suffix == "_gsum")
		}
	case "_count", "_gcount":
		g.counts++
		if m.Summary != nil {
			// Summaries count in integers only.
			if !(v >= 0 && v < 1<<64 && v == math.Trunc(v)) {
				g.bad = true
			}
			m.Summary.SampleCount = proto.Uint64(uint64(max(v, 0)))
		} else {
			m.Histogram.SampleCount, m.Histogram.SampleCountFloat = nil, nil
			setCount(&m.Histogram.SampleCount, &m.Histogram.SampleCountFloat, v)
			g.bad = g.bad || gauge != (suffix == "_gcount")
		}
	}
}

// groupKey sets a.key to the label set without the name and skip.
func (a *assembler) groupKey(lset labels.Labels, skip string) {
	a.key = a.key[:0]
	lset.Range(func(l labels.Label) {
		if l.Name == model.MetricNameLabel || l.Name == skip {
			return
		}
		a.key = append(a.key, l.Name...)
		a.key = append(a.key, 0)
		a.key = append(a.key, l.Value...)
		a.key = append(a.key, 0)
	})
}

func dtoType(t model.MetricType) dto.MetricType {
	switch t {
	case model.MetricTypeCounter:
		return dto.MetricType_COUNTER
	case model.MetricTypeGauge, model.MetricTypeInfo, model.MetricTypeStateset:
		return dto.MetricType_GAUGE
	case model.MetricTypeSummary:
		return dto.MetricType_SUMMARY
	case model.MetricTypeHistogram:
		return dto.MetricType_HISTOGRAM
	case model.MetricTypeGaugeHistogram:
		return dto.MetricType_GAUGE_HISTOGRAM
	}
	return dto.MetricType_UNTYPED
}

// labelPairs converts a label set, without the name and skip, in three
// allocations rather than three per label. The strings are shared with
// lset, which is immutable.
func labelPairs(lset labels.Labels, skip string) []*dto.LabelPair {
	n := 0
	lset.Range(func(l labels.Label) {
		if l.Name != model.MetricNameLabel && l.Name != skip {
			n++
		}
	})
	if n == 0 {
		return nil
	}
	pairs := make([]dto.LabelPair, n)
	strs := make([]string, 2*n)
	out := make([]*dto.LabelPair, n)
	i := 0
	lset.Range(func(l labels.Label) {
		if l.Name == model.MetricNameLabel || l.Name == skip {
			return
		}
		strs[2*i], strs[2*i+1] = l.Name, l.Value
		pairs[i].Name, pairs[i].Value = &strs[2*i], &strs[2*i+1]
		out[i] = &pairs[i]
		i++
	})
	return out
}

// setCount stores a count as an integer when it is one, which every
// format can express, and as a float otherwise (float histograms).
func setCount(u **uint64, f **float64, v float64) {
	if v >= 0 && v < 1<<63 && v == math.Trunc(v) {
		*u = proto.Uint64(uint64(v))
		return
	}
	*f = proto.Float64(v)
}

func timestampFromSeconds(v float64) *timestamppb.Timestamp {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	sec, frac := math.Modf(v)
	return &timestamppb.Timestamp{Seconds: int64(sec), Nanos: int32(math.Round(frac*1e6)) * 1000}
}

func timeFromMs(ms int64) time.Time { return time.UnixMilli(ms) }

func dtoExemplar(ex *exemplar.Exemplar) *dto.Exemplar {
	if ex == nil {
		return nil
	}
	e := &dto.Exemplar{Value: proto.Float64(ex.Value), Label: labelPairs(ex.Labels, "")}
	if ex.HasTs {
		e.Timestamp = timestamppb.New(timeFromMs(ex.Ts))
	}
	return e
}

// familyWriter encodes client_model families in the output format into a
// buffer that it writes out in blocks. A family with the name of the one
// written just before is the next part of it (families larger than a chunk
// come in parts, and the aggregate endpoint merges exporters): in the text
// formats its metadata lines are left out, so each family appears once.
// Bare families (see isBare) have no metadata and do not count as the one
// written before.
//
// A writer that takes its lines marked (markedWriter: the aggregate
// endpoint's segmenter) gets text and OpenMetrics as the direct path hands
// it over: written into the buffer it lends, with where each line ends and
// which lines are metadata, so that it does not read them again. One that
// takes its frames marked (frameMarker: the aggregate endpoint's framer)
// gets protobuf so, with what it would read of each frame.
type familyWriter struct {
	w    io.Writer
	out  Format
	esc  model.EscapingScheme
	buf  []byte
	last string
	// marked is w when it takes the lines marked, framed when it takes
	// the frames marked. buf is then the buffer it lent, the output from
	// from on, marks or frameMarks what is there; own is the writer's own
	// buffer meanwhile.
	marked     markedWriter
	framed     frameMarker
	marks      []lineMark
	frameMarks []frameMark
	from       int
	own        []byte
}

// flushBytes is how much encoded output is collected before a write.
const flushBytes = 32 << 10

func (fw *familyWriter) reset(w io.Writer, out Format, esc model.EscapingScheme) {
	fw.unlend()
	fw.w, fw.out, fw.esc, fw.last = w, out, esc, ""
	fw.buf, fw.marks, fw.frameMarks, fw.from = fw.buf[:0], fw.marks[:0], fw.frameMarks[:0], 0
	if m, ok := w.(markedWriter); ok && out != FormatProtobuf {
		fw.marked, fw.own = m, fw.buf
		fw.lend()
	}
	if m, ok := w.(frameMarker); ok && out == FormatProtobuf {
		fw.framed, fw.own = m, fw.buf
		fw.lend()
	}
}

// lend takes the marked writer's buffer for the next write.
func (fw *familyWriter) lend() {
	if fw.framed != nil {
		fw.buf = fw.framed.frameBuffer()
	} else {
		fw.buf = fw.marked.markedBuffer()
	}
	fw.from = len(fw.buf)
}

// unlend lets go of the marked writer's buffer, which the pipeline must
// not keep: the writer passes it on.
func (fw *familyWriter) unlend() {
	if fw.marked != nil || fw.framed != nil {
		fw.buf, fw.own, fw.marked, fw.framed, fw.from = fw.own[:0], nil, nil, nil, 0
		fw.marks, fw.frameMarks = fw.marks[:0], fw.frameMarks[:0]
	}
}

// pending is how much output waits in buf.
func (fw *familyWriter) pending() int { return len(fw.buf) - fw.from }

func (fw *familyWriter) write(mf *dto.MetricFamily) error {
	if len(mf.Metric) == 0 {
		return nil
	}
	switch fw.out {
	case FormatProtobuf:
		e := escapeFamily(mf, fw.esc)
		start := len(fw.buf)
		fw.buf = binary.AppendUvarint(fw.buf, uint64(proto.Size(e)))
		body := len(fw.buf)
		b, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(fw.buf, e)
		if err != nil {
			return err
		}
		fw.buf = b
		if fw.framed != nil {
			fw.frameMarks = append(fw.frameMarks, familyMark(e, b, start, body))
		}
	default:
		om, meta := fw.out == FormatOpenMetrics, mf.GetName() != fw.last
		if fw.marked != nil {
			fw.buf = appendFamilyMarked(fw.buf, &fw.marks, mf, om, meta, fw.esc)
		} else {
			fw.buf = appendFamily(fw.buf, mf, om, meta, fw.esc)
		}
	}
	if !isBare(mf) {
		fw.last = mf.GetName()
	}
	if fw.pending() >= flushBytes {
		return fw.flush()
	}
	return nil
}

// writeFrames adds protobuf frames to the output; marks are their marks
// with places counted from the start of b, when the writer takes marks.
func (fw *familyWriter) writeFrames(b []byte, marks []frameMark) error {
	if fw.framed != nil {
		at, n := len(fw.buf), len(fw.frameMarks)
		fw.frameMarks = append(fw.frameMarks, marks...)
		for i := range fw.frameMarks[n:] {
			fw.frameMarks[n+i].start += at
		}
	}
	fw.buf = append(fw.buf, b...)
	if fw.pending() >= flushBytes {
		return fw.flush()
	}
	return nil
}

// writeLines adds lines of text or OpenMetrics to the output; marks are
// their marks with ends counted from the start of b, when the writer takes
// marks.
func (fw *familyWriter) writeLines(b []byte, marks []lineMark) error {
	if fw.marked != nil {
		at := len(fw.buf)
		for _, m := range marks {
			m.end += at
			fw.marks = append(fw.marks, m)
		}
	}
	fw.buf = append(fw.buf, b...)
	if fw.pending() >= flushBytes {
		return fw.flush()
	}
	return nil
}

func (fw *familyWriter) flush() error {
	if fw.pending() == 0 {
		return nil
	}
	if fw.marked != nil {
		err := fw.marked.writeMarked(fw.buf, fw.from, fw.marks)
		fw.marks = fw.marks[:0]
		fw.lend()
		return err
	}
	if fw.framed != nil {
		err := fw.framed.writeFrames(fw.buf, fw.from, fw.frameMarks)
		fw.frameMarks = fw.frameMarks[:0]
		fw.lend()
		return err
	}
	_, err := fw.w.Write(fw.buf)
	fw.buf = fw.buf[:0]
	return err
}

// finish writes what the format needs after the last family, and the rest
// of the buffer.
func (fw *familyWriter) finish() error {
	if fw.out == FormatOpenMetrics {
		// Not marked: the segmenter leaves it out, and the aggregate
		// writes its own.
		fw.buf = append(fw.buf, "# EOF\n"...)
	}
	err := fw.flush()
	fw.unlend()
	return err
}
