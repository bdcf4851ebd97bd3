package relay

import (
	"math"
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// familyBuilder turns the relabeled series of one parsed text or
// OpenMetrics family into client_model families, grouping the series of
// summaries and classic histograms into metrics. Strings are cloned: the
// parser's may point into a chunk buffer that is reused.
type familyBuilder struct {
	name, help, unit string
	typ              model.MetricType
	fam              *dto.MetricFamily
	// groups maps a label set without le/quantile to its metric, for
	// summaries and histograms.
	groups map[string]*dto.Metric
	// strays are series whose (relabeled) name does not belong to the
	// family; each becomes its own untyped family.
	strays []*dto.MetricFamily
}

func (f *familyBuilder) reset(name, help, unit string, typ model.MetricType) {
	*f = familyBuilder{name: name, help: help, unit: unit, typ: typ, groups: f.groups}
	clear(f.groups)
}

// family returns the built families: the main one (if it got metrics or
// carries metadata) and the strays.
func (f *familyBuilder) families() []*dto.MetricFamily {
	out := f.strays
	if f.fam != nil {
		out = append([]*dto.MetricFamily{f.fam}, out...)
	}
	return out
}

func (f *familyBuilder) dtoType() dto.MetricType {
	switch f.typ {
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

// familyName is the name client_model uses: counters and info metrics carry
// their suffix, as client_golang exposes them.
func (f *familyBuilder) familyName() string {
	switch f.typ {
	case model.MetricTypeCounter:
		if !strings.HasSuffix(f.name, "_total") {
			return f.name + "_total"
		}
	case model.MetricTypeInfo:
		if !strings.HasSuffix(f.name, "_info") {
			return f.name + "_info"
		}
	}
	return f.name
}

func (f *familyBuilder) main() *dto.MetricFamily {
	if f.fam == nil {
		f.fam = &dto.MetricFamily{Name: proto.String(f.familyName()), Type: f.dtoType().Enum()}
		if f.help != "" {
			f.fam.Help = proto.String(f.help)
		}
		if f.unit != "" {
			f.fam.Unit = proto.String(f.unit)
		}
	}
	return f.fam
}

// add adds one relabeled series.
func (f *familyBuilder) add(lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) {
	name := lset.Get(model.MetricNameLabel)
	base := f.familyName()
	switch f.typ {
	case model.MetricTypeSummary, model.MetricTypeHistogram, model.MetricTypeGaugeHistogram:
		if suffix, ok := strings.CutPrefix(name, f.name); ok && f.addComplex(suffix, lset, v, ts, ex) {
			return
		}
	case model.MetricTypeCounter:
		if name == f.name+"_created" {
			return // no place for it outside OpenMetrics; Prometheus 2 ignores it too
		}
		if name == base {
			f.main().Metric = append(f.main().Metric, f.simple(lset, v, ts, ex))
			return
		}
	default:
		if name == base || f.name == "" {
			if f.name == "" {
				f.name = strings.Clone(name)
			}
			f.main().Metric = append(f.main().Metric, f.simple(lset, v, ts, ex))
			return
		}
	}
	f.strays = append(f.strays, &dto.MetricFamily{
		Name:   proto.String(strings.Clone(name)),
		Type:   dto.MetricType_UNTYPED.Enum(),
		Metric: []*dto.Metric{f.simple(lset, v, ts, ex)},
	})
}

func labelPairs(lset labels.Labels, skip string) []*dto.LabelPair {
	pairs := make([]*dto.LabelPair, 0, lset.Len())
	lset.Range(func(l labels.Label) {
		if l.Name == model.MetricNameLabel || l.Name == skip {
			return
		}
		pairs = append(pairs, &dto.LabelPair{Name: proto.String(strings.Clone(l.Name)), Value: proto.String(strings.Clone(l.Value))})
	})
	return pairs
}

func (f *familyBuilder) simple(lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) *dto.Metric {
	m := &dto.Metric{Label: labelPairs(lset, "")}
	if ts != nil {
		m.TimestampMs = proto.Int64(*ts)
	}
	switch f.typ {
	case model.MetricTypeCounter:
		m.Counter = &dto.Counter{Value: proto.Float64(v), Exemplar: dtoExemplar(ex)}
	case model.MetricTypeGauge, model.MetricTypeInfo, model.MetricTypeStateset:
		m.Gauge = &dto.Gauge{Value: proto.Float64(v)}
	default:
		m.Untyped = &dto.Untyped{Value: proto.Float64(v)}
	}
	return m
}

// addComplex adds a series of a summary or histogram to its metric.
func (f *familyBuilder) addComplex(suffix string, lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) bool {
	skip := ""
	switch {
	case suffix == "" && f.typ == model.MetricTypeSummary:
		skip = model.QuantileLabel
	case suffix == "_bucket" && f.typ != model.MetricTypeSummary:
		skip = model.BucketLabel
	case suffix == "_sum", suffix == "_count", suffix == "_gsum", suffix == "_gcount", suffix == "_created":
	default:
		return false
	}
	key := groupKey(lset, skip)
	if f.groups == nil {
		f.groups = make(map[string]*dto.Metric)
	}
	m, ok := f.groups[key]
	if !ok {
		m = &dto.Metric{Label: labelPairs(lset, skip)}
		if f.typ == model.MetricTypeSummary {
			m.Summary = &dto.Summary{}
		} else {
			m.Histogram = &dto.Histogram{}
		}
		f.groups[key] = m
		f.main().Metric = append(f.main().Metric, m)
	}
	if ts != nil {
		m.TimestampMs = proto.Int64(*ts)
	}
	switch suffix {
	case "":
		q, err := strconv.ParseFloat(lset.Get(model.QuantileLabel), 64)
		if err != nil {
			return false
		}
		m.Summary.Quantile = append(m.Summary.Quantile, &dto.Quantile{Quantile: proto.Float64(q), Value: proto.Float64(v)})
	case "_bucket":
		le, err := strconv.ParseFloat(lset.Get(model.BucketLabel), 64)
		if err != nil {
			return false
		}
		if math.IsInf(le, 1) {
			// +Inf is implied by the count in client_model.
			if m.Histogram.SampleCount == nil && m.Histogram.SampleCountFloat == nil {
				setCount(&m.Histogram.SampleCount, &m.Histogram.SampleCountFloat, v)
			}
			return true
		}
		b := &dto.Bucket{UpperBound: proto.Float64(le), Exemplar: dtoExemplar(ex)}
		setCount(&b.CumulativeCount, &b.CumulativeCountFloat, v)
		m.Histogram.Bucket = append(m.Histogram.Bucket, b)
	case "_sum", "_gsum":
		if m.Summary != nil {
			m.Summary.SampleSum = proto.Float64(v)
		} else {
			m.Histogram.SampleSum = proto.Float64(v)
		}
	case "_count", "_gcount":
		if m.Summary != nil {
			m.Summary.SampleCount = proto.Uint64(uint64(v))
		} else {
			m.Histogram.SampleCount, m.Histogram.SampleCountFloat = nil, nil
			setCount(&m.Histogram.SampleCount, &m.Histogram.SampleCountFloat, v)
		}
	case "_created":
		// Dropped like a counter's _created: text and Prometheus 2 ignore it.
	}
	return true
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

// groupKey identifies the metric a summary or histogram series belongs to.
func groupKey(lset labels.Labels, skip string) string {
	var b strings.Builder
	lset.Range(func(l labels.Label) {
		if l.Name == model.MetricNameLabel || l.Name == skip {
			return
		}
		b.WriteString(l.Name)
		b.WriteByte(0)
		b.WriteString(l.Value)
		b.WriteByte(0)
	})
	return b.String()
}

func dtoExemplar(ex *exemplar.Exemplar) *dto.Exemplar {
	if ex == nil {
		return nil
	}
	e := &dto.Exemplar{Value: proto.Float64(ex.Value)}
	ex.Labels.Range(func(l labels.Label) {
		e.Label = append(e.Label, &dto.LabelPair{Name: proto.String(strings.Clone(l.Name)), Value: proto.String(strings.Clone(l.Value))})
	})
	if ex.HasTs {
		e.Timestamp = timestamppb.New(timeFromMs(ex.Ts))
	}
	return e
}
