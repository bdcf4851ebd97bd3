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
	"strconv"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// The family encoders write client_model families as text 0.0.4 or
// OpenMetrics 1.0 with the same spelling as the direct path (textenc.go),
// so that names are quoted or escaped the same way whichever path a series
// takes. They follow expfmt's output, except where expfmt would lose or
// rename series:
//
//   - A family that is untyped and has neither help nor unit is written as
//     bare samples, without a TYPE line: that is how it came in (a text
//     series without metadata, or a series relabeling split off a histogram,
//     see pbClassic), and bare samples may appear again later in the body
//     without repeating metadata.
//   - Gauge histograms keep OpenMetrics' sample names (_gcount, _gsum),
//     typed gaugehistogram in OpenMetrics and untyped in text 0.0.4, which
//     has no such type: typing them "histogram", as expfmt does in text,
//     would claim counter semantics, and writing _count and _sum in
//     OpenMetrics would rename the series.
//   - Histogram counts that are not integers are written as they are;
//     expfmt refuses them in OpenMetrics, which would abort the response.
//   - A UNIT that is not a suffix of the family name is left out: Prometheus'
//     OpenMetrics parser refuses the whole exposition for it.

// appendFamily encodes mf in text (om false) or OpenMetrics. meta says
// whether its HELP, TYPE and UNIT lines are written: a family that continues
// the one written just before has them already.
func appendFamily(b []byte, mf *dto.MetricFamily, om, meta bool, esc model.EscapingScheme) []byte {
	return appendFamilyMarked(b, nil, mf, om, meta, esc)
}

// appendFamilyMarked is appendFamily that also appends the marks of the
// lines it writes to *marks, unless marks is nil (see markSample).
func appendFamilyMarked(b []byte, marks *[]lineMark, mf *dto.MetricFamily, om, meta bool, esc model.EscapingScheme) []byte {
	name := mf.GetName()
	typ := mf.GetType()
	metaName := familyMetaName(name, typ, om)
	if meta && !isBare(mf) {
		b = appendFamilyMetaMarked(b, marks, name, typ, mf.Help, mf.Unit, om, esc)
	}
	createdName := metaName
	// sample writes a sample line and marks it: the line before it had
	// the same series name when it had the same suffix and was a sample
	// line of this family (prev).
	prev := "\n" // no suffix is a newline
	sample := func(suffix string, pairs []*dto.LabelPair, extra, extraValue string, v float64, ts *int64, ex *dto.Exemplar) {
		b = appendDTOSample(b, name, suffix, pairs, extra, extraValue, v, ts, om, esc, ex)
		if marks != nil {
			*marks = markSample(*marks, len(b), suffix == prev)
			prev = suffix
		}
	}
	created := func(pairs []*dto.LabelPair, ts *timestamppb.Timestamp) {
		b = appendDTOCreated(b, createdName, pairs, ts.GetSeconds(), ts.GetNanos(), esc)
		if marks != nil {
			// createdName differs from name: a series name of its own.
			*marks = markSample(*marks, len(b), false)
			prev = "\n"
		}
	}
	for _, m := range mf.Metric {
		ts := m.TimestampMs
		switch typ {
		case dto.MetricType_COUNTER:
			c := m.GetCounter()
			sample("", m.Label, "", "", c.GetValue(), ts, c.GetExemplar())
			if om && c.CreatedTimestamp != nil && metaName != name {
				created(m.Label, c.CreatedTimestamp)
			}
		case dto.MetricType_GAUGE:
			sample("", m.Label, "", "", m.GetGauge().GetValue(), ts, nil)
		case dto.MetricType_SUMMARY:
			s := m.GetSummary()
			for _, q := range s.GetQuantile() {
				sample("", m.Label, model.QuantileLabel, boundString(q.GetQuantile(), om), q.GetValue(), ts, nil)
			}
			sample("_sum", m.Label, "", "", s.GetSampleSum(), ts, nil)
			sample("_count", m.Label, "", "", float64(s.GetSampleCount()), ts, nil)
			if om && s.CreatedTimestamp != nil {
				created(m.Label, s.CreatedTimestamp)
			}
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			h := m.GetHistogram()
			infSeen := false
			for _, bk := range h.GetBucket() {
				var ex *dto.Exemplar
				if om {
					ex = bk.GetExemplar()
				}
				// A gauge histogram's bounds keep OpenMetrics' spelling
				// in text too: untyped there, they are not normalized.
				le := boundString(bk.GetUpperBound(), om || typ == dto.MetricType_GAUGE_HISTOGRAM)
				sample("_bucket", m.Label, model.BucketLabel, le, bucketCount(bk), ts, ex)
				infSeen = infSeen || math.IsInf(bk.GetUpperBound(), 1)
			}
			if !infSeen {
				sample("_bucket", m.Label, model.BucketLabel, "+Inf", histogramCount(h), ts, nil)
			}
			sum, count := "_sum", "_count"
			if typ == dto.MetricType_GAUGE_HISTOGRAM {
				sum, count = "_gsum", "_gcount"
			}
			sample(sum, m.Label, "", "", h.GetSampleSum(), ts, nil)
			sample(count, m.Label, "", "", histogramCount(h), ts, nil)
			if om && h.CreatedTimestamp != nil && typ == dto.MetricType_HISTOGRAM {
				created(m.Label, h.CreatedTimestamp)
			}
		default:
			sample("", m.Label, "", "", m.GetUntyped().GetValue(), ts, nil)
		}
	}
	return b
}

// markSample appends the mark of a sample line that ends at end, or, when
// same says it has the series name of the sample line marked last and
// follows it, makes that mark cover it too. The segmenter looks only at
// the start of a sample mark's first line (segmenter.sample), and what it
// concludes there holds for the lines after it that start with the same
// name: the first one kept the family or started one of that name, which
// they are series of. So the segments are those of one mark per line, and
// a family of counters or gauges is one mark.
func markSample(marks []lineMark, end int, same bool) []lineMark {
	if n := len(marks); same && n > 0 && !marks[n-1].meta {
		marks[n-1].end = end
		return marks
	}
	return append(marks, lineMark{end: end})
}

// familyMetaName is the name a family's metadata lines carry: an
// OpenMetrics counter's without _total.
func familyMetaName(name string, typ dto.MetricType, om bool) string {
	if typ == dto.MetricType_COUNTER && om {
		if trimmed, ok := strings.CutSuffix(name, "_total"); ok {
			return trimmed
		}
	}
	return name
}

// appendFamilyMeta writes the HELP, TYPE and UNIT lines of a family of
// name name and type typ.
func appendFamilyMeta(b []byte, name string, typ dto.MetricType, help, unit *string, om bool, esc model.EscapingScheme) []byte {
	return appendFamilyMetaMarked(b, nil, name, typ, help, unit, om, esc)
}

// appendFamilyMetaMarked is appendFamilyMeta that also appends the marks
// of the lines it writes to *marks, unless marks is nil: each is metadata,
// a # TYPE line's with its type, and with the name's length when the name
// is written bare.
func appendFamilyMetaMarked(b []byte, marks *[]lineMark, name string, typ dto.MetricType, help, unit *string, om bool, esc model.EscapingScheme) []byte {
	metaName := familyMetaName(name, typ, om)
	var nameLen int32
	if isLegacyName(metaName, true) {
		nameLen = int32(len(metaName))
	}
	typeName := ""
	switch typ {
	case dto.MetricType_COUNTER:
		typeName = "counter"
		if om && metaName == name {
			typeName = "unknown"
		}
	case dto.MetricType_GAUGE:
		typeName = "gauge"
	case dto.MetricType_SUMMARY:
		typeName = "summary"
	case dto.MetricType_HISTOGRAM:
		typeName = "histogram"
	case dto.MetricType_GAUGE_HISTOGRAM:
		typeName = "untyped"
		if om {
			typeName = "gaugehistogram"
		}
	default:
		typeName = typeNameUnknown(om)
	}
	if help != nil {
		b = appendHelp(b, metaName, *help, om, esc)
		if marks != nil {
			*marks = append(*marks, lineMark{end: len(b), nameLen: nameLen, meta: true})
		}
	}
	b = appendMetaLine(b, "TYPE", metaName, typeName, esc)
	if marks != nil {
		*marks = append(*marks, lineMark{end: len(b), nameLen: nameLen, meta: true, typ: markType(typeName)})
	}
	if u := ptrValue(unit); om && u != "" && strings.HasSuffix(metaName, "_"+u) {
		b = appendMetaLine(b, "UNIT", metaName, u, esc)
		if marks != nil {
			*marks = append(*marks, lineMark{end: len(b), nameLen: nameLen, meta: true})
		}
	}
	return b
}

func ptrValue(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

func typeNameUnknown(om bool) string {
	if om {
		return "unknown"
	}
	return "untyped"
}

// isBare reports whether a family is written without metadata.
func isBare(mf *dto.MetricFamily) bool {
	return mf.GetType() == dto.MetricType_UNTYPED && mf.Help == nil && mf.Unit == nil
}

// bucketCount and histogramCount read counts as Prometheus' protobuf
// parser does: the float field when it is not zero, the integer otherwise.
func bucketCount(b *dto.Bucket) float64 {
	if v := b.GetCumulativeCountFloat(); v != 0 {
		return v
	}
	return float64(b.GetCumulativeCount())
}

func histogramCount(h *dto.Histogram) float64 {
	if v := h.GetSampleCountFloat(); v != 0 {
		return v
	}
	return float64(h.GetSampleCount())
}

// boundString spells an le or quantile value as expfmt does: shortest in
// text, OpenMetrics' float form (1.0, not 1) in OpenMetrics. Prometheus
// normalizes both to the latter for histograms and summaries.
func boundString(f float64, om bool) string {
	if om {
		return labels.FormatOpenMetricsFloat(f)
	}
	switch {
	case math.IsInf(f, 1):
		return "+Inf"
	case math.IsInf(f, -1):
		return "-Inf"
	}
	return strconv.FormatFloat(f, 'g', -1, 64)
}

// appendDTOSample writes one sample line of a metric: name+suffix, its
// labels plus an optional le or quantile label, the value, the timestamp,
// and in OpenMetrics the exemplar.
func appendDTOSample(b []byte, name, suffix string, pairs []*dto.LabelPair, extra, extraValue string, v float64, ts *int64, om bool, esc model.EscapingScheme, ex *dto.Exemplar) []byte {
	b, open := appendSeriesName(b, name, suffix, esc)
	for _, lp := range pairs {
		b, open = appendLabel(b, open, lp.GetName(), lp.GetValue(), esc)
	}
	if extra != "" {
		b, open = appendLabel(b, open, extra, extraValue, esc)
	}
	if open {
		b = append(b, '}')
	}
	b = appendValueTimestamp(b, v, ts, om)
	if om && ex != nil && len(ex.Label) > 0 {
		b = append(b, " # {"...)
		for i, lp := range ex.Label {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendLabelName(b, lp.GetName(), esc)
			b = append(b, '=')
			b = appendQuoted(b, lp.GetValue())
		}
		b = append(b, "} "...)
		b = appendFloat(b, ex.GetValue())
		if ex.Timestamp != nil {
			b = append(b, ' ')
			b = appendSecondsNanos(b, ex.Timestamp.GetSeconds(), ex.Timestamp.GetNanos())
		}
	}
	return append(b, '\n')
}

// appendDTOCreated writes an OpenMetrics _created line.
func appendDTOCreated(b []byte, name string, pairs []*dto.LabelPair, sec int64, nanos int32, esc model.EscapingScheme) []byte {
	b, open := appendSeriesName(b, name, "_created", esc)
	for _, lp := range pairs {
		b, open = appendLabel(b, open, lp.GetName(), lp.GetValue(), esc)
	}
	if open {
		b = append(b, '}')
	}
	b = append(b, ' ')
	b = appendSecondsNanos(b, sec, nanos)
	return append(b, '\n')
}

// appendSeriesName writes name+suffix and reports whether a brace is open:
// a name that is not a classic one goes inside the braces, quoted, unless
// it is escaped for a scraper without UTF-8 support.
func appendSeriesName(b []byte, name, suffix string, esc model.EscapingScheme) ([]byte, bool) {
	if isLegacyName(name, true) {
		return append(append(b, name...), suffix...), false
	}
	if esc != model.NoEscaping && name+suffix != "" {
		return append(b, escapeMetricName(name+suffix, esc)...), false
	}
	b = append(b, '{')
	return appendQuoted(b, name+suffix), true
}

// appendLabel writes name="value" after a { or a comma.
func appendLabel[S string | []byte](b []byte, open bool, name, value S, esc model.EscapingScheme) ([]byte, bool) {
	if open {
		b = append(b, ',')
	} else {
		b = append(b, '{')
	}
	b = appendLabelName(b, name, esc)
	b = append(b, '=')
	return appendQuoted(b, value), true
}

func appendLabelName[S string | []byte](b []byte, name S, esc model.EscapingScheme) []byte {
	if isLegacyName(name, false) {
		return append(b, name...)
	}
	if esc != model.NoEscaping && len(name) > 0 {
		return append(b, escapeLabelName(string(name), esc)...)
	}
	return appendQuoted(b, name)
}

// appendSecondsNanos writes a timestamp as exact decimal seconds.
func appendSecondsNanos(b []byte, sec int64, nanos int32) []byte {
	if sec < 0 && nanos > 0 {
		// -1.5 s is stored as -2 s + 0.5e9 ns.
		sec++
		nanos = 1e9 - nanos
		if sec == 0 {
			b = append(b, '-')
		}
	}
	b = strconv.AppendInt(b, sec, 10)
	if nanos == 0 {
		return b
	}
	var frac [9]byte
	for i := 8; i >= 0; i-- {
		frac[i] = byte('0' + nanos%10)
		nanos /= 10
	}
	n := 9
	for n > 1 && frac[n-1] == '0' {
		n--
	}
	b = append(b, '.')
	return append(b, frac[:n]...)
}

// escapeMetricName and escapeLabelName spell a name for a scraper that
// takes no UTF-8 names, with the negotiated escaping scheme; classic names
// and NoEscaping leave it as it is.
func escapeMetricName(name string, esc model.EscapingScheme) string {
	if esc == model.NoEscaping || isLegacyName(name, true) {
		return name
	}
	return model.EscapeName(name, esc)
}

func escapeLabelName(name string, esc model.EscapingScheme) string {
	if esc == model.NoEscaping || isLegacyName(name, false) {
		return name
	}
	s := model.EscapeName(name, esc)
	if !isLegacyName(s, false) {
		// EscapeName keeps colons, which only metric names may have.
		s = strings.ReplaceAll(s, ":", "_")
	}
	return s
}

// escapeFamily returns mf with every name spelled for a scraper that takes
// no UTF-8 names, for the protobuf output; mf itself when nothing needs it.
// Metrics and label pairs are copied only where a name changes.
func escapeFamily(mf *dto.MetricFamily, esc model.EscapingScheme) *dto.MetricFamily {
	if esc == model.NoEscaping || !familyNeedsEscaping(mf) {
		return mf
	}
	out := &dto.MetricFamily{Name: mf.Name, Help: mf.Help, Type: mf.Type, Unit: mf.Unit, Metric: make([]*dto.Metric, len(mf.Metric))}
	if n := mf.GetName(); !isLegacyName(n, true) {
		out.Name = proto.String(escapeMetricName(n, esc))
	}
	for i, m := range mf.Metric {
		out.Metric[i] = m
		if !pairsNeedEscaping(m.Label) {
			continue
		}
		c := &dto.Metric{Gauge: m.Gauge, Counter: m.Counter, Summary: m.Summary, Untyped: m.Untyped, Histogram: m.Histogram, TimestampMs: m.TimestampMs}
		c.Label = make([]*dto.LabelPair, len(m.Label))
		for j, lp := range m.Label {
			c.Label[j] = lp
			if !isLegacyName(lp.GetName(), false) {
				c.Label[j] = &dto.LabelPair{Name: proto.String(escapeLabelName(lp.GetName(), esc)), Value: lp.Value}
			}
		}
		out.Metric[i] = c
	}
	return out
}

func familyNeedsEscaping(mf *dto.MetricFamily) bool {
	if !isLegacyName(mf.GetName(), true) {
		return true
	}
	for _, m := range mf.Metric {
		if pairsNeedEscaping(m.Label) {
			return true
		}
	}
	return false
}

func pairsNeedEscaping(pairs []*dto.LabelPair) bool {
	for _, lp := range pairs {
		if !isLegacyName(lp.GetName(), false) {
			return true
		}
	}
	return false
}
