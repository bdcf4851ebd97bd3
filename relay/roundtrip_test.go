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
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/textparse"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// exposition is what Prometheus reads from a body: every series with its
// value (or native histogram), timestamp, exemplars and start (created)
// timestamp, and the metadata of every family.
type exposition struct {
	series map[string]point
	meta   map[string]familyMeta
	names  map[string]bool // of the series
}

type point struct {
	lset      labels.Labels
	ts        string // "@<ms>" or ""
	value     float64
	histogram string
	exemplars string
	start     int64
}

type familyMeta struct{ typ, help, unit string }

// readExposition parses body as Prometheus does, with _created lines read
// as start timestamps. classic reads native histograms as their classic
// series (+Inf bucket, count and sum), as Prometheus does without native
// histograms and as the text formats spell them.
func readExposition(t *testing.T, body []byte, ct string, classic bool) exposition {
	t.Helper()
	p, err := textparse.New(body, ct, nil, textparse.ParserOptions{OpenMetricsSkipSTSeries: true, IgnoreNativeHistograms: classic})
	if err != nil {
		t.Fatal(err)
	}
	e := exposition{series: map[string]point{}, meta: map[string]familyMeta{}, names: map[string]bool{}}
	var lset labels.Labels
	var ex exemplar.Exemplar
	for {
		entry, err := p.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("does not parse (%s): %v\n%s", ct, err, truncate(string(body)))
		}
		switch entry {
		case textparse.EntryHelp:
			name, help := p.Help()
			m := e.meta[string(name)]
			m.help = string(help)
			e.meta[string(name)] = m
		case textparse.EntryType:
			name, typ := p.Type()
			m := e.meta[string(name)]
			m.typ = string(typ)
			e.meta[string(name)] = m
		case textparse.EntryUnit:
			name, unit := p.Unit()
			m := e.meta[string(name)]
			m.unit = string(unit)
			e.meta[string(name)] = m
		case textparse.EntrySeries, textparse.EntryHistogram:
			var pt point
			var ts *int64
			if entry == textparse.EntrySeries {
				_, ts, pt.value = p.Series()
			} else {
				_, hts, ih, fh := p.Histogram()
				ts = hts
				if ih != nil {
					pt.histogram = ih.String()
				} else {
					pt.histogram = fh.String()
				}
			}
			p.Labels(&lset)
			var exs []string
			for p.Exemplar(&ex) {
				exs = append(exs, fmt.Sprintf("%s %v %v@%d", ex.Labels, ex.Value, ex.HasTs, ex.Ts))
				ex = exemplar.Exemplar{}
			}
			sort.Strings(exs)
			pt.exemplars = strings.Join(exs, ";")
			pt.start = p.StartTimestamp()
			e.names[lset.Get(model.MetricNameLabel)] = true
			pt.lset = labels.NewBuilder(lset).Labels()
			if ts != nil {
				pt.ts = fmt.Sprintf("@%d", *ts)
			}
			e.series[pt.lset.String()+pt.ts] = pt
		}
	}
	return e
}

// normalize brings the metadata of the formats to one spelling: families
// keyed by the name their samples have (counters with _total, info with
// _info), untyped called unknown, help "" for none, and families without
// type, help, unit or series left out.
func (e exposition) normalize() exposition {
	meta := map[string]familyMeta{}
	for name, m := range e.meta {
		switch m.typ {
		case "counter":
			if !strings.HasSuffix(name, "_total") {
				name += "_total"
			}
		case "info":
			if !strings.HasSuffix(name, "_info") {
				name += "_info"
			}
		case "untyped", "":
			m.typ = "unknown"
		}
		if m == (familyMeta{typ: "unknown"}) || !e.hasSeries(name, m.typ) {
			continue
		}
		meta[name] = m
	}
	e.meta = meta
	return e
}

// hasSeries reports whether a family has samples.
func (e exposition) hasSeries(name, typ string) bool {
	if typ == "counter" && e.names[strings.TrimSuffix(name, "_total")] {
		return true
	}
	for _, s := range []string{"", "_bucket", "_sum", "_count", "_gsum", "_gcount"} {
		if e.names[name+s] {
			return true
		}
	}
	return false
}

func sameExposition(t *testing.T, want, got exposition) {
	t.Helper()
	for k, w := range want.series {
		g, ok := got.series[k]
		switch {
		case !ok:
			t.Errorf("missing series %s", k)
		case w.histogram != g.histogram:
			t.Errorf("%s: histogram %s, want %s", k, g.histogram, w.histogram)
		case !(w.value == g.value || math.IsNaN(w.value) && math.IsNaN(g.value)):
			t.Errorf("%s = %v, want %v", k, g.value, w.value)
		case w.exemplars != g.exemplars:
			t.Errorf("%s: exemplars %q, want %q", k, g.exemplars, w.exemplars)
		case w.start != g.start:
			t.Errorf("%s: start timestamp %d, want %d", k, g.start, w.start)
		}
	}
	for k := range got.series {
		if _, ok := want.series[k]; !ok {
			t.Errorf("unexpected series %s", k)
		}
	}
	for k, w := range want.meta {
		if g, ok := got.meta[k]; !ok || g != w {
			t.Errorf("metadata of %s: %+v, want %+v", k, g, w)
		}
	}
	for k, g := range got.meta {
		if _, ok := want.meta[k]; !ok {
			t.Errorf("unexpected metadata %s: %+v", k, g)
		}
	}
}

// expectAcross turns what was read from the input into what must be read
// from the output of another format, by the differences between the
// formats (each is stated in the README or the encoders' comments):
//
//   - Text 0.0.4 has no exemplars, units, created timestamps, or info,
//     stateset and gauge histogram types (the first two become gauges,
//     gauge histograms untyped with their OpenMetrics sample names).
//   - Protobuf has no info and stateset types (gauges) and reads a zero
//     timestamp as none; gauge histograms between OpenMetrics and protobuf
//     go as untyped series, since the two name their count and sum apart.
//   - OpenMetrics written from protobuf carries no created timestamps:
//     exporters leave _created lines out there, and Prometheus would store
//     them as series.
//   - An OpenMetrics counter family without _total samples is unknown.
func expectAcross(in exposition, from, to Format) exposition {
	return expect(in, from, to, false)
}

// expectAggregate is expectAcross for the aggregate endpoint of one
// exporter: every series gets the exporter label (an upstream label of that
// name moves to exported_exporter). OpenMetrics relayed to OpenMetrics
// keeps its info and stateset types there too, as the exporter's own
// endpoint does; every other pair goes through client_model, which has
// neither.
func expectAggregate(in exposition, from, to Format) exposition {
	out := expect(in, from, to, from != to || to != FormatOpenMetrics)
	series := map[string]point{}
	for _, p := range out.series {
		b := labels.NewBuilder(p.lset)
		if v := p.lset.Get("exporter"); v != "" {
			name := "exported_exporter"
			for p.lset.Has(name) {
				name = "exported_" + name
			}
			b.Set(name, v)
		}
		p.lset = b.Set("exporter", "up").Labels()
		series[p.lset.String()+p.ts] = p
	}
	out.series = series
	return out
}

func expect(in exposition, from, to Format, viaDTO bool) exposition {
	out := exposition{series: map[string]point{}, meta: map[string]familyMeta{}, names: in.names}
	for k, p := range in.series {
		if to == FormatProtobuf && p.ts == "@0" {
			p.ts = ""
			k = p.lset.String()
		}
		if to == FormatText || from == FormatProtobuf && to == FormatOpenMetrics {
			p.start = 0
		}
		if to == FormatText {
			p.exemplars = ""
		}
		out.series[k] = p
	}
	for name, m := range in.meta {
		switch {
		case m.typ == "gaugehistogram" && (to == FormatProtobuf) != (from == FormatProtobuf):
			continue // relayed as untyped series
		case m.typ == "gaugehistogram" && to == FormatText:
			m.typ = "unknown"
		case (m.typ == "info" || m.typ == "stateset") && (to != FormatOpenMetrics || viaDTO):
			m.typ = "gauge"
		case m.typ == "counter" && to == FormatOpenMetrics && from != to && !in.names[name]:
			m.typ = "unknown" // its samples lack _total
		}
		if to == FormatText {
			m.unit = ""
		}
		if m == (familyMeta{typ: "unknown"}) {
			continue
		}
		out.meta[name] = m
	}
	return out
}

// protobufFixture covers what protobuf carries: every type, native and
// mixed histograms, exemplars, created timestamps, units, timestamps,
// special values and names that need quoting.
func protobufFixture() []*dto.MetricFamily {
	created := timestamppb.New(timeFromMs(1699999999500))
	exTS := timestamppb.New(timeFromMs(1700000000001))
	mixed := nativeHistogramFamily()
	mixed.Name = proto.String("mixed_seconds")
	mixed.Metric[0].Histogram.Bucket = []*dto.Bucket{
		{UpperBound: proto.Float64(0.5), CumulativeCount: proto.Uint64(4)},
		{UpperBound: proto.Float64(1), CumulativeCount: proto.Uint64(9), Exemplar: &dto.Exemplar{Label: []*dto.LabelPair{pair("trace_id", "m1")}, Value: proto.Float64(0.7)}},
	}
	return []*dto.MetricFamily{
		{Name: proto.String("jobs_seconds_total"), Help: proto.String(`Jobs with "quotes", \ and` + "\nnewline."), Type: dto.MetricType_COUNTER.Enum(), Unit: proto.String("seconds"), Metric: []*dto.Metric{
			{Label: []*dto.LabelPair{pair("kind", "a")}, Counter: &dto.Counter{Value: proto.Float64(10), CreatedTimestamp: created,
				Exemplar: &dto.Exemplar{Label: []*dto.LabelPair{pair("trace_id", "abc")}, Value: proto.Float64(1), Timestamp: exTS}}},
			{Label: []*dto.LabelPair{pair("kind", "b")}, Counter: &dto.Counter{Value: proto.Float64(2)}, TimestampMs: proto.Int64(1700000000123)},
		}},
		{Name: proto.String("temperature"), Help: proto.String("A gauge."), Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{
			{Label: []*dto.LabelPair{pair("v", "nan")}, Gauge: &dto.Gauge{Value: proto.Float64(math.NaN())}},
			{Label: []*dto.LabelPair{pair("v", "inf")}, Gauge: &dto.Gauge{Value: proto.Float64(math.Inf(1))}},
			{Label: []*dto.LabelPair{pair("v", "ninf")}, Gauge: &dto.Gauge{Value: proto.Float64(math.Inf(-1))}},
			{Label: []*dto.LabelPair{pair("v", "tiny"), pair("w", "a\\b\"c\nd")}, Gauge: &dto.Gauge{Value: proto.Float64(-1.5e-300)}},
		}},
		{Name: proto.String("rpc_seconds"), Help: proto.String("A summary."), Type: dto.MetricType_SUMMARY.Enum(), Unit: proto.String("seconds"), Metric: []*dto.Metric{
			{Label: []*dto.LabelPair{pair("service", "x")}, Summary: &dto.Summary{SampleCount: proto.Uint64(210), SampleSum: proto.Float64(17.5), CreatedTimestamp: created,
				Quantile: []*dto.Quantile{{Quantile: proto.Float64(0.5), Value: proto.Float64(0.05)}, {Quantile: proto.Float64(0.99), Value: proto.Float64(math.NaN())}}}},
			{Label: []*dto.LabelPair{pair("service", "y")}, Summary: &dto.Summary{SampleCount: proto.Uint64(0), SampleSum: proto.Float64(0)}},
		}},
		{Name: proto.String("req_size_bytes"), Help: proto.String("A classic histogram."), Type: dto.MetricType_HISTOGRAM.Enum(), Metric: []*dto.Metric{
			{Histogram: &dto.Histogram{SampleCount: proto.Uint64(10), SampleSum: proto.Float64(4321), CreatedTimestamp: created, Bucket: []*dto.Bucket{
				{UpperBound: proto.Float64(100), CumulativeCount: proto.Uint64(4), Exemplar: &dto.Exemplar{Label: []*dto.LabelPair{pair("trace_id", "t1")}, Value: proto.Float64(50)}},
				{UpperBound: proto.Float64(1000), CumulativeCount: proto.Uint64(9)},
			}}},
			{Label: []*dto.LabelPair{pair("handler", "b")}, Histogram: &dto.Histogram{SampleCountFloat: proto.Float64(2.5), SampleSum: proto.Float64(0.75), Bucket: []*dto.Bucket{
				{UpperBound: proto.Float64(0.5), CumulativeCountFloat: proto.Float64(1.5)},
				{UpperBound: proto.Float64(math.Inf(1)), CumulativeCountFloat: proto.Float64(2.5)},
			}}, TimestampMs: proto.Int64(1700000000000)},
		}},
		nativeHistogramFamily(),
		mixed,
		{Name: proto.String("queue_size"), Help: proto.String("A gauge histogram."), Type: dto.MetricType_GAUGE_HISTOGRAM.Enum(), Metric: []*dto.Metric{
			{Histogram: &dto.Histogram{SampleCount: proto.Uint64(3), SampleSum: proto.Float64(7), Bucket: []*dto.Bucket{
				{UpperBound: proto.Float64(1), CumulativeCount: proto.Uint64(1)}, {UpperBound: proto.Float64(5), CumulativeCount: proto.Uint64(3)},
			}}},
		}},
		{Name: proto.String("mystery"), Type: dto.MetricType_UNTYPED.Enum(), Metric: []*dto.Metric{
			{Label: []*dto.LabelPair{pair("a", "1")}, Untyped: &dto.Untyped{Value: proto.Float64(42)}},
		}},
		{Name: proto.String("my.utf8.metric"), Help: proto.String("Quoted name."), Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{
			{Label: []*dto.LabelPair{pair("label.with.dots", "v"), pair("ok", "ü ✓")}, Gauge: &dto.Gauge{Value: proto.Float64(2)}},
		}},
	}
}

// TestRelay_RoundTripFormats relays fixtures of every input format into
// every output format and reads the output back as Prometheus does: it must
// give the same series, values, timestamps, native histograms, exemplars,
// created timestamps, help, types and units as the input, as far as the
// two formats can both express them (expectAcross).
func TestRelay_RoundTripFormats(t *testing.T) {
	node := nodeExporterFixture(t)
	inputs := []struct {
		name   string
		format Format
		ct     string
		body   []byte
	}{
		{"text rich", FormatText, "text/plain; version=0.0.4", []byte(richText)},
		{"text node_exporter", FormatText, "text/plain; version=0.0.4", node},
		{"text testdata rich", FormatText, "text/plain; version=0.0.4", testdataFile(t, "rich.txt")},
		{"text testdata edge", FormatText, "text/plain; version=0.0.4", testdataFile(t, "edge.txt")},
		{"openmetrics", FormatOpenMetrics, ContentTypeOpenMetrics, []byte(richOM)},
		{"openmetrics testdata rich", FormatOpenMetrics, ContentTypeOpenMetrics, testdataFile(t, "rich.om")},
		{"openmetrics testdata gaugehistogram", FormatOpenMetrics, ContentTypeOpenMetrics, testdataFile(t, "gaugehistogram.om")},
		{"protobuf fixture", FormatProtobuf, ContentTypeProtobuf, protobufBody(t, protobufFixture()...)},
		{"protobuf testdata rich", FormatProtobuf, ContentTypeProtobuf, textToProtobuf(t, string(testdataFile(t, "rich.txt")))},
		{"protobuf node_exporter", FormatProtobuf, ContentTypeProtobuf, textToProtobuf(t, string(node))},
	}
	outputs := []struct {
		name   string
		format Format
		accept string
	}{
		{"text", FormatText, "text/plain;version=1.0.0"},
		{"openmetrics", FormatOpenMetrics, acceptOM + ";escaping=allow-utf-8"},
		{"protobuf", FormatProtobuf, acceptProto + ";escaping=allow-utf-8"},
	}
	for _, in := range inputs {
		up := upstreamServer(t, in.ct, in.body)
		r, _ := newRelay(t, "exporters:\n  - name: up\n    url: "+up.URL+"\n")
		for _, out := range outputs {
			t.Run(in.name+" to "+out.name, func(t *testing.T) {
				rec := scrape(t, r, "/exporters/up/metrics", out.accept)
				if rec.Code != 200 {
					t.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
				// Native histograms only survive into protobuf; the text
				// formats carry them as classic series.
				classic := out.format != FormatProtobuf
				want := expectAcross(readExposition(t, in.body, in.ct, classic).normalize(), in.format, out.format)
				got := readExposition(t, rec.Body.Bytes(), rec.Header().Get("Content-Type"), classic).normalize()
				sameExposition(t, want, got)
				if len(got.series) == 0 {
					t.Fatal("no series")
				}
			})
			t.Run(in.name+" to "+out.name+" aggregated", func(t *testing.T) {
				rec := scrape(t, r, "/exporters/metrics", out.accept)
				if rec.Code != 200 {
					t.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
				classic := out.format != FormatProtobuf
				want := expectAggregate(readExposition(t, in.body, in.ct, classic).normalize(), in.format, out.format)
				got := readExposition(t, rec.Body.Bytes(), rec.Header().Get("Content-Type"), classic).normalize()
				sameExposition(t, want, got)
			})
		}
	}
}
