package relay

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// assembler turns the relabeled series of a text or OpenMetrics stream
// into client_model families, grouping the series of summaries and
// classic histograms into metrics, and emits each family when the next one
// begins or the chunk ends. Only one family is held at a time.
type assembler struct {
	om   bool
	emit func(*dto.MetricFamily) error

	name  string // the family's name in its metadata, or its first sample's
	fname string // the name client_model uses (counters end in _total)
	help  *string
	unit  *string
	typ   model.MetricType
	fam   *dto.MetricFamily
	// groups maps a label set without le or quantile to its metric, for
	// summaries and histograms, and OpenMetrics counters (for _created).
	groups map[string]*dto.Metric
	key    []byte
}

func (a *assembler) reset(om bool, emit func(*dto.MetricFamily) error) {
	a.om, a.emit = om, emit
	a.clear()
}

func (a *assembler) clear() {
	a.name, a.fname, a.help, a.unit, a.typ, a.fam = "", "", nil, nil, model.MetricTypeUnknown, nil
	clear(a.groups)
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
	if string(name) != a.name || a.fam != nil {
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

// flush emits the family held, if it has metrics, and forgets it.
func (a *assembler) flush() error {
	fam := a.fam
	a.clear()
	if fam == nil || len(fam.Metric) == 0 {
		return nil
	}
	return a.emit(fam)
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
		if a.addComplex(suffix, lset, v, ts, ex) {
			return nil
		}
		// A series the family cannot hold (say, a bucket without a valid
		// le): relay it as it is, in a family of its own.
		if err := a.flush(); err != nil {
			return err
		}
		a.start(name, model.MetricTypeUnknown)
	case model.MetricTypeCounter:
		if a.om {
			a.groupKey(lset, "")
			if suffix == "_created" {
				if m := a.groups[string(a.key)]; m != nil {
					m.Counter.CreatedTimestamp = timestampFromSeconds(v)
				}
				return nil
			}
			m := a.simple(lset, v, ts, ex)
			if a.groups == nil {
				a.groups = make(map[string]*dto.Metric)
			}
			a.groups[string(a.key)] = m
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

// addComplex adds a series of a summary or histogram to its metric.
func (a *assembler) addComplex(suffix string, lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) bool {
	skip := ""
	var bound float64
	switch suffix {
	case "":
		skip = model.QuantileLabel
	case "_bucket":
		skip = model.BucketLabel
	}
	if skip != "" {
		b, err := strconv.ParseFloat(lset.Get(skip), 64)
		if err != nil {
			return false
		}
		bound = b
	}
	a.groupKey(lset, skip)
	if a.groups == nil {
		a.groups = make(map[string]*dto.Metric)
	}
	m, ok := a.groups[string(a.key)]
	if !ok {
		m = &dto.Metric{Label: labelPairs(lset, skip)}
		if a.typ == model.MetricTypeSummary {
			m.Summary = &dto.Summary{}
		} else {
			m.Histogram = &dto.Histogram{}
		}
		a.groups[string(a.key)] = m
		f := a.family()
		f.Metric = append(f.Metric, m)
	}
	if ts != nil && suffix != "_created" {
		m.TimestampMs = proto.Int64(*ts)
	}
	switch suffix {
	case "":
		m.Summary.Quantile = append(m.Summary.Quantile, &dto.Quantile{Quantile: proto.Float64(bound), Value: proto.Float64(v)})
	case "_bucket":
		// +Inf is kept as an explicit bucket (client_model allows it, and
		// every encoder and parser knows it): its value and exemplar then
		// survive as they were, even when _count disagrees.
		b := &dto.Bucket{UpperBound: proto.Float64(bound), Exemplar: dtoExemplar(ex)}
		setCount(&b.CumulativeCount, &b.CumulativeCountFloat, v)
		m.Histogram.Bucket = append(m.Histogram.Bucket, b)
		if math.IsInf(bound, 1) && m.Histogram.SampleCount == nil && m.Histogram.SampleCountFloat == nil {
			// Stands in for a missing _count.
			setCount(&m.Histogram.SampleCount, &m.Histogram.SampleCountFloat, v)
		}
	case "_sum", "_gsum":
		if m.Summary != nil {
			m.Summary.SampleSum = proto.Float64(v)
		} else {
			m.Histogram.SampleSum = proto.Float64(v)
		}
	case "_count", "_gcount":
		if m.Summary != nil {
			m.Summary.SampleCount = proto.Uint64(uint64(max(v, 0)))
		} else {
			m.Histogram.SampleCount, m.Histogram.SampleCountFloat = nil, nil
			setCount(&m.Histogram.SampleCount, &m.Histogram.SampleCountFloat, v)
		}
	case "_created":
		if m.Summary != nil {
			m.Summary.CreatedTimestamp = timestampFromSeconds(v)
		} else {
			m.Histogram.CreatedTimestamp = timestampFromSeconds(v)
		}
	}
	return true
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
type familyWriter struct {
	w    io.Writer
	out  Format
	buf  bytes.Buffer
	last string
}

// flushBytes is how much encoded output is collected before a write.
const flushBytes = 32 << 10

func (fw *familyWriter) reset(w io.Writer, out Format) {
	fw.w, fw.out, fw.last = w, out, ""
	fw.buf.Reset()
}

func (fw *familyWriter) write(mf *dto.MetricFamily) error {
	if len(mf.Metric) == 0 {
		return nil
	}
	start := fw.buf.Len()
	var err error
	switch fw.out {
	case FormatProtobuf:
		size := proto.Size(mf)
		b := binary.AppendUvarint(fw.buf.AvailableBuffer(), uint64(size))
		b, err = proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(b, mf)
		fw.buf.Write(b)
	case FormatOpenMetrics:
		_, err = expfmt.MetricFamilyToOpenMetrics(&fw.buf, mf, expfmt.WithCreatedLines())
	default:
		if mf.GetType() == dto.MetricType_GAUGE_HISTOGRAM {
			fw.buf.Write(appendGaugeHistogramText(fw.buf.AvailableBuffer(), mf))
			break
		}
		_, err = expfmt.MetricFamilyToText(&fw.buf, mf)
	}
	if err != nil {
		return err
	}
	if fw.out != FormatProtobuf && mf.GetName() == fw.last {
		b := fw.buf.Bytes()[start:]
		n := 0
		for n < len(b) && b[n] == '#' {
			n += bytes.IndexByte(b[n:], '\n') + 1
		}
		copy(b, b[n:])
		fw.buf.Truncate(fw.buf.Len() - n)
	}
	fw.last = mf.GetName()
	if fw.buf.Len() >= flushBytes {
		return fw.flush()
	}
	return nil
}

func (fw *familyWriter) flush() error {
	if fw.buf.Len() == 0 {
		return nil
	}
	_, err := fw.w.Write(fw.buf.Bytes())
	fw.buf.Reset()
	return err
}

// finish writes what the format needs after the last family, and the rest
// of the buffer.
func (fw *familyWriter) finish() error {
	if fw.out == FormatOpenMetrics {
		fw.buf.WriteString("# EOF\n")
	}
	return fw.flush()
}

// appendGaugeHistogramText spells a gauge histogram for text 0.0.4, which
// has no such type, as one untyped family holding the OpenMetrics sample
// names (_bucket, _gcount, _gsum). Prometheus then stores the same series as
// from an OpenMetrics scrape; typing it "histogram", as expfmt does, would
// rename _gcount and _gsum and claim counter semantics the values lack.
func appendGaugeHistogramText(b []byte, mf *dto.MetricFamily) []byte {
	name := mf.GetName()
	if mf.Help != nil {
		b = appendHelp(b, []byte(name), []byte(mf.GetHelp()), false)
	}
	b = appendMetaLine(b, "TYPE", []byte(name), "untyped")
	var sb labels.ScratchBuilder
	series := func(m *dto.Metric, suffix, le string) labels.Labels {
		sb.Reset()
		sb.Add(model.MetricNameLabel, name+suffix)
		for _, lp := range m.Label {
			sb.Add(lp.GetName(), lp.GetValue())
		}
		if le != "" {
			sb.Add(model.BucketLabel, le)
		}
		sb.Sort()
		return sb.Labels()
	}
	for _, m := range mf.Metric {
		h := m.GetHistogram()
		for _, bucket := range h.GetBucket() {
			count := float64(bucket.GetCumulativeCount())
			if bucket.CumulativeCountFloat != nil {
				count = bucket.GetCumulativeCountFloat()
			}
			le := strconv.FormatFloat(bucket.GetUpperBound(), 'g', -1, 64)
			b = appendSample(b, series(m, "_bucket", le), count, m.TimestampMs, nil, false)
		}
		count := float64(h.GetSampleCount())
		if h.SampleCountFloat != nil {
			count = h.GetSampleCountFloat()
		}
		b = appendSample(b, series(m, "_gcount", ""), count, m.TimestampMs, nil, false)
		b = appendSample(b, series(m, "_gsum", ""), h.GetSampleSum(), m.TimestampMs, nil, false)
	}
	return b
}
