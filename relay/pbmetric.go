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
	"math"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/protobuf/proto"
)

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
	out, keep, err := p.relabelMetric(h.name, m, "", "")
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
			out, _, _ := p.relabelMetric(name, m, "", "")
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
		out, keep, err := p.relabelMetric(name+c.suffix, m, magicName, c.magic)
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
		out, keep, err := p.relabelMetric(name, m, "", "")
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

// relabelMetric relabels protobuf metric m as the series name, with the
// label magicName=magic when magic is set (the le or quantile of a series
// of a histogram or summary): protobuf metrics and their series are
// relabeled here, the series of the text formats in parse.
func (p *pipeline) relabelMetric(name string, m *dto.Metric, magicName, magic string) (labels.Labels, bool, error) {
	p.metricScratch.Reset()
	p.metricScratch.Add(model.MetricNameLabel, name)
	for _, l := range m.Label {
		p.metricScratch.Add(l.GetName(), l.GetValue())
	}
	if magic != "" {
		p.metricScratch.Add(magicName, magic)
	}
	p.metricScratch.Sort()
	return p.relabel(p.metricScratch.Labels())
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
