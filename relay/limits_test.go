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
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// tinyGaugesFrame is one MetricFamily frame of n gauges with empty values,
// the smallest valid metric (four bytes on the wire, well over a hundred
// decoded).
func tinyGaugesFrame(n int) []byte {
	var fam []byte
	fam = protowire.AppendTag(fam, fieldFamilyName, protowire.BytesType)
	fam = protowire.AppendString(fam, "tiny")
	fam = protowire.AppendTag(fam, fieldFamilyType, protowire.VarintType)
	fam = protowire.AppendVarint(fam, uint64(dto.MetricType_GAUGE))
	metric := protowire.AppendTag(nil, 2, protowire.BytesType) // gauge
	metric = protowire.AppendBytes(metric, nil)
	for range n {
		fam = protowire.AppendTag(fam, fieldFamilyMetric, protowire.BytesType)
		fam = protowire.AppendBytes(fam, metric)
	}
	return protowire.AppendBytes(nil, fam)
}

func protobufBody(t testing.TB, fams ...*dto.MetricFamily) []byte {
	t.Helper()
	var buf bytes.Buffer
	for _, mf := range fams {
		if _, err := protodelim.MarshalTo(&buf, mf); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func readProtobuf(t testing.TB, body []byte) []*dto.MetricFamily {
	t.Helper()
	var fams []*dto.MetricFamily
	r := bytes.NewReader(body)
	for r.Len() > 0 {
		mf := &dto.MetricFamily{}
		if err := protodelim.UnmarshalFrom(r, mf); err != nil {
			t.Fatalf("output does not decode: %v", err)
		}
		fams = append(fams, mf)
	}
	return fams
}

func pair(name, value string) *dto.LabelPair {
	return &dto.LabelPair{Name: proto.String(name), Value: proto.String(value)}
}

// TestRelay_ProtobufManyTinyMetrics: a frame of a million tiny metrics is
// relayed in parts, each family of the same name, all metrics there.
func TestRelay_ProtobufManyTinyMetrics(t *testing.T) {
	const n = 200_000
	up := upstreamServer(t, ContentTypeProtobuf, tinyGaugesFrame(n))
	// The timeout only stops a hung test: under the race detector on a
	// loaded machine this relay can take longer than the 10 s default.
	r, m := newRelay(t, "exporters:\n  - name: e\n    url: "+up.URL+"\n    timeout: 5m\n")
	rec := scrape(t, r, "/exporters/e/metrics", acceptProto)
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	fams := readProtobuf(t, rec.Body.Bytes())
	total := 0
	for _, mf := range fams {
		if mf.GetName() != "tiny" || mf.GetType() != dto.MetricType_GAUGE {
			t.Fatalf("unexpected family %q of type %v", mf.GetName(), mf.GetType())
		}
		total += len(mf.Metric)
	}
	if total != n || len(fams) < 2 {
		t.Errorf("%d metrics in %d parts, want %d in several parts", total, len(fams), n)
	}
	if v := testutil.ToFloat64(m.Samples.WithLabelValues("e")); v != n {
		t.Errorf("samples_total = %v, want %d", v, n)
	}
	rec = scrape(t, r, "/exporters/e/metrics", acceptText)
	if got := strings.Count(rec.Body.String(), "\ntiny "); got != n || strings.Count(rec.Body.String(), "# TYPE tiny gauge\n") != 1 {
		t.Errorf("text output: %d samples, %d TYPE lines", got, strings.Count(rec.Body.String(), "# TYPE"))
	}
}

// TestRelay_ProtobufInvalidMetrics: protobuf metrics that would make the
// output invalid, or that Prometheus refuses, fail the scrape with a 502
// and the reason.
func TestRelay_ProtobufInvalidMetrics(t *testing.T) {
	gauge := func(l ...*dto.LabelPair) *dto.MetricFamily {
		return &dto.MetricFamily{Name: proto.String("g"), Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{{Label: l, Gauge: &dto.Gauge{Value: proto.Float64(1)}}}}
	}
	many := make([]*dto.LabelPair, 40)
	for i := range many {
		many[i] = pair(fmt.Sprintf("l%02d", i), "v")
	}
	many[39] = pair("l07", "again")
	tests := []struct {
		name   string
		fam    *dto.MetricFamily
		reason string
	}{
		{"duplicate label", gauge(pair("a", "1"), pair("a", "2")), `label "a" repeated`},
		{"duplicate among many labels", gauge(many...), `label "l07" repeated`},
		{"__name__ label", gauge(pair("__name__", "other")), "__name__ label"},
		{"empty label name", gauge(pair("", "x")), "label without a valid name"},
		{"invalid UTF-8 value", gauge(pair("a", "\xff")), "not UTF-8"},
		{"le on a histogram", &dto.MetricFamily{Name: proto.String("h"), Type: dto.MetricType_HISTOGRAM.Enum(), Metric: []*dto.Metric{{
			Label: []*dto.LabelPair{pair("le", "1")}, Histogram: &dto.Histogram{SampleCount: proto.Uint64(1)},
		}}}, `histogram metric with a label "le"`},
		{"quantile on a summary", &dto.MetricFamily{Name: proto.String("s"), Type: dto.MetricType_SUMMARY.Enum(), Metric: []*dto.Metric{{
			Label: []*dto.LabelPair{pair("quantile", "0.5")}, Summary: &dto.Summary{},
		}}}, `summary metric with a label "quantile"`},
		{"exemplar with invalid UTF-8", &dto.MetricFamily{Name: proto.String("c_total"), Type: dto.MetricType_COUNTER.Enum(), Metric: []*dto.Metric{{
			Counter: &dto.Counter{Value: proto.Float64(1), Exemplar: &dto.Exemplar{Label: []*dto.LabelPair{pair("trace", "\xfe")}, Value: proto.Float64(1)}},
		}}}, "invalid exemplar"},
		{"value of another type", &dto.MetricFamily{Name: proto.String("c_total"), Type: dto.MetricType_COUNTER.Enum(), Metric: []*dto.Metric{{
			Gauge: &dto.Gauge{Value: proto.Float64(1)},
		}}}, "without a COUNTER value"},
		{"unknown type", &dto.MetricFamily{Name: proto.String("x"), Type: dto.MetricType(42).Enum()}, "unknown metric type"},
		{"no name", &dto.MetricFamily{Type: dto.MetricType_GAUGE.Enum()}, "without a valid name"},
	}
	for _, tt := range tests {
		for _, rules := range []string{"", "\n    metric_relabel_configs:\n      - target_label: env\n        replacement: prod"} {
			t.Run(fmt.Sprintf("%s/rules=%v", tt.name, rules != ""), func(t *testing.T) {
				up := upstreamServer(t, ContentTypeProtobuf, protobufBody(t, tt.fam))
				r, m := newRelay(t, "exporters:\n  - name: e\n    url: "+up.URL+rules+"\n")
				for _, accept := range []string{acceptText, acceptOM, acceptProto} {
					rec := scrape(t, r, "/exporters/e/metrics", accept)
					if rec.Code != 502 || !strings.Contains(rec.Body.String(), tt.reason) {
						t.Errorf("%s: status %d %q, want 502 with %q", accept, rec.Code, rec.Body, tt.reason)
					}
				}
				if v := testutil.ToFloat64(m.UpstreamErrors.WithLabelValues("e", "parse")); v != 3 {
					t.Errorf("upstream_errors_total{reason=parse} = %v, want 3", v)
				}
			})
		}
	}
}

// bigHistogramText is one histogram metric with n buckets (and a second,
// small metric after it).
func bigHistogramText(n int) string {
	var b strings.Builder
	b.WriteString("# HELP big A histogram with many buckets.\n# TYPE big histogram\n")
	for i := range n {
		fmt.Fprintf(&b, "big_bucket{host=\"a\",le=\"%d\"} %d\n", i+1, i)
	}
	fmt.Fprintf(&b, "big_bucket{host=\"a\",le=\"+Inf\"} %d\nbig_sum{host=\"a\"} 12.5\nbig_count{host=\"a\"} %d\n", n, n)
	b.WriteString("big_bucket{host=\"b\",le=\"1\"} 1\nbig_bucket{host=\"b\",le=\"+Inf\"} 1\nbig_sum{host=\"b\"} 1\nbig_count{host=\"b\"} 1\n")
	b.WriteString("# TYPE after gauge\nafter 1\n")
	return b.String()
}

// TestRelay_LargeMetricNotCut: a histogram metric larger than a chunk is
// never cut in two (which would read as two conflicting metrics), from text
// or OpenMetrics to protobuf and OpenMetrics; one larger than
// max_metric_bytes is a 502 with the reason.
func TestRelay_LargeMetricNotCut(t *testing.T) {
	const buckets = 60_000 // about 2.3 MB, beyond the 1 MiB chunk
	text := bigHistogramText(buckets)
	if len(text) < 2*maxChunkBytes {
		t.Fatalf("fixture of %d bytes is too small", len(text))
	}
	om := text + "# EOF\n"
	inputs := []struct{ name, ct, body string }{
		{"text", "text/plain; version=0.0.4", text},
		{"openmetrics", ContentTypeOpenMetrics, om},
	}
	for _, in := range inputs {
		up := upstreamServer(t, in.ct, []byte(in.body))
		want := series(t, []byte(in.body), in.ct)
		t.Run(in.name+" to protobuf", func(t *testing.T) {
			r, _ := newRelay(t, "exporters:\n  - name: e\n    url: "+up.URL+"\n")
			rec := scrape(t, r, "/exporters/e/metrics", acceptProto)
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			var metrics []*dto.Metric
			for _, mf := range readProtobuf(t, rec.Body.Bytes()) {
				if mf.GetName() == "big" {
					metrics = append(metrics, mf.Metric...)
				}
			}
			if len(metrics) != 2 {
				t.Fatalf("%d metrics, want 2", len(metrics))
			}
			h := metrics[0].GetHistogram()
			if len(h.Bucket) != buckets+1 || h.GetSampleCount() != buckets || h.GetSampleSum() != 12.5 {
				t.Errorf("big metric: %d buckets, count %d, sum %v", len(h.Bucket), h.GetSampleCount(), h.GetSampleSum())
			}
			sameSeries(t, want, series(t, rec.Body.Bytes(), rec.Header().Get("Content-Type")))
		})
		t.Run(in.name+" to openmetrics", func(t *testing.T) {
			r, _ := newRelay(t, "exporters:\n  - name: e\n    url: "+up.URL+"\n")
			rec := scrape(t, r, "/exporters/e/metrics", acceptOM)
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			body := rec.Body.String()
			if n := strings.Count(body, "big_count{"); n != 2 {
				t.Errorf("%d big_count series, want 2", n)
			}
			if n := strings.Count(body, "# TYPE big histogram\n"); n != 1 {
				t.Errorf("%d TYPE lines for big, want 1", n)
			}
			sameSeries(t, want, series(t, rec.Body.Bytes(), rec.Header().Get("Content-Type")))
		})
		t.Run(in.name+" over max_metric_bytes", func(t *testing.T) {
			r, m := newRelay(t, "max_metric_bytes: 2000000\nexporters:\n  - name: e\n    url: "+up.URL+"\n")
			for _, accept := range []string{acceptProto, acceptOM} {
				rec := scrape(t, r, "/exporters/e/metrics", accept)
				if rec.Code != 502 || !strings.Contains(rec.Body.String(), "exceeds max_metric_bytes") {
					t.Errorf("%s: status %d %q, want 502 with the reason", accept, rec.Code, rec.Body)
				}
			}
			if v := testutil.ToFloat64(m.UpstreamErrors.WithLabelValues("e", "metric_too_large")); v != 2 {
				t.Errorf("upstream_errors_total{reason=metric_too_large} = %v, want 2", v)
			}
			// Text to text copies series line by line and holds no metric.
			if in.name == "text" {
				if rec := scrape(t, r, "/exporters/e/metrics", acceptText); rec.Code != 200 {
					t.Errorf("text to text: status %d", rec.Code)
				}
			}
		})
	}
	t.Run("many small metrics are cut between metrics", func(t *testing.T) {
		var b strings.Builder
		b.WriteString("# TYPE many histogram\n")
		for i := range 20_000 {
			fmt.Fprintf(&b, "many_bucket{i=\"%d\",le=\"1\"} 1\nmany_bucket{i=\"%d\",le=\"+Inf\"} 2\nmany_sum{i=\"%d\"} 3\nmany_count{i=\"%d\"} 2\n", i, i, i, i)
		}
		up := upstreamServer(t, "text/plain", []byte(b.String()))
		r, _ := newRelay(t, "max_metric_bytes: 4096\nexporters:\n  - name: e\n    url: "+up.URL+"\n")
		rec := scrape(t, r, "/exporters/e/metrics", acceptProto)
		if rec.Code != 200 {
			t.Fatalf("status %d: %s", rec.Code, rec.Body)
		}
		n := 0
		for _, mf := range readProtobuf(t, rec.Body.Bytes()) {
			for _, m := range mf.Metric {
				if h := m.GetHistogram(); len(h.Bucket) != 2 || h.GetSampleSum() != 3 {
					t.Fatalf("metric cut: %v", m)
				}
				n++
			}
		}
		if n != 20_000 {
			t.Errorf("%d metrics, want 20000", n)
		}
	})
}

// TestRelay_ProtobufMetricTooLarge: one protobuf metric whose decoded size
// exceeds max_metric_bytes is refused before it is decoded.
func TestRelay_ProtobufMetricTooLarge(t *testing.T) {
	h := &dto.Histogram{SampleCount: proto.Uint64(1), SampleSum: proto.Float64(1)}
	for i := range 100_000 {
		h.Bucket = append(h.Bucket, &dto.Bucket{UpperBound: proto.Float64(float64(i)), CumulativeCount: proto.Uint64(0)})
	}
	body := protobufBody(t, &dto.MetricFamily{Name: proto.String("h"), Type: dto.MetricType_HISTOGRAM.Enum(), Metric: []*dto.Metric{{Histogram: h}}})
	up := upstreamServer(t, ContentTypeProtobuf, body)
	r, _ := newRelay(t, "exporters:\n  - name: e\n    url: "+up.URL+"\n")
	// 1.3 MB on the wire, about 14 MB decoded: over the default 4 MiB.
	rec := scrape(t, r, "/exporters/e/metrics", acceptProto)
	if rec.Code != 502 || !strings.Contains(rec.Body.String(), "exceeds max_metric_bytes") {
		t.Fatalf("status %d %q, want 502 with the reason", rec.Code, rec.Body)
	}
	r, _ = newRelay(t, "max_metric_bytes: 64000000\nexporters:\n  - name: e\n    url: "+up.URL+"\n")
	if rec := scrape(t, r, "/exporters/e/metrics", acceptProto); rec.Code != 200 {
		t.Fatalf("with a higher limit: status %d %q", rec.Code, rec.Body)
	}
}

func TestDecodedSize_Estimates(t *testing.T) {
	metrics := []*dto.Metric{
		{Gauge: &dto.Gauge{}},
		{Label: []*dto.LabelPair{pair("a", "b"), pair("c", strings.Repeat("x", 1000))}, Counter: &dto.Counter{Value: proto.Float64(1), Exemplar: &dto.Exemplar{Label: []*dto.LabelPair{pair("t", "1")}}}},
		nativeHistogramFamily().Metric[0],
		{Summary: &dto.Summary{Quantile: []*dto.Quantile{{Quantile: proto.Float64(0.5)}, {Quantile: proto.Float64(0.9)}}}},
	}
	for i, m := range metrics {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		size, err := decodedSize(b, msgMetric)
		if err != nil {
			t.Fatal(err)
		}
		// Not exact, but above the wire size and in the range of the
		// structs proto.Unmarshal allocates.
		if size < len(b) || size < 100 || size > 64*len(b)+400 {
			t.Errorf("metric %d: estimated %d bytes for %d on the wire", i, size, len(b))
		}
	}
	if _, err := decodedSize([]byte{0x0a, 0x05, 0x01}, msgMetric); err == nil {
		t.Error("truncated message accepted")
	}
}

// escapingText has names that need quoting, or escaping for a scraper
// that takes no UTF-8 names.
const escapingText = `# HELP "my.metric" A metric whose name needs quotes.
# TYPE "my.metric" gauge
{"my.metric","label.with.dots"="v","ok"="w"} 2
# TYPE classic gauge
classic{"ünï"="x",plain="y"} 3
# TYPE "h.ist" histogram
{"h.ist_bucket",le="1"} 1
{"h.ist_bucket",le="+Inf"} 2
{"h.ist_sum"} 3
{"h.ist_count"} 2
`

// TestRelay_Escaping: names that are not classic ones are quoted for a
// scraper that takes UTF-8 (text 1.0.0 or escaping=allow-utf-8) and
// escaped with the scheme asked for otherwise, underscores by default, in
// every output format and from every input format; the Content-Type says
// which.
func TestRelay_Escaping(t *testing.T) {
	inputs := []struct {
		name, ct string
		body     []byte
	}{
		{"text", "text/plain; version=0.0.4", []byte(escapingText)},
		{"openmetrics", ContentTypeOpenMetrics, []byte(escapingText + "# EOF\n")},
		{"protobuf", ContentTypeProtobuf, textToProtobuf(t, escapingText)},
	}
	accepts := []struct {
		accept string
		esc    model.EscapingScheme
		ct     string
	}{
		{"text/plain;version=0.0.4", model.UnderscoreEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"},
		{"text/plain;version=1.0.0", model.NoEscaping, "text/plain; version=1.0.0; charset=utf-8; escaping=allow-utf-8"},
		{"text/plain;version=0.0.4;escaping=dots", model.DotsEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=dots"},
		{"text/plain;version=0.0.4;escaping=values", model.ValueEncodingEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=values"},
		{acceptOM, model.UnderscoreEscaping, ContentTypeOpenMetrics + "; escaping=underscores"},
		{acceptOM + ";escaping=allow-utf-8", model.NoEscaping, ContentTypeOpenMetrics + "; escaping=allow-utf-8"},
		{acceptProto, model.UnderscoreEscaping, ContentTypeProtobuf + "; escaping=underscores"},
		{acceptProto + ";escaping=allow-utf-8", model.NoEscaping, ContentTypeProtobuf + "; escaping=allow-utf-8"},
	}
	for _, in := range inputs {
		up := upstreamServer(t, in.ct, in.body)
		r, _ := newRelay(t, "exporters:\n  - name: e\n    url: "+up.URL+"\n")
		for _, a := range accepts {
			t.Run(in.name+"/"+a.accept, func(t *testing.T) {
				rec := scrape(t, r, "/exporters/e/metrics", a.accept)
				if rec.Code != 200 {
					t.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
				ct := rec.Header().Get("Content-Type")
				if ct != a.ct {
					t.Errorf("Content-Type %q, want %q", ct, a.ct)
				}
				want := parseSeries(t, []byte(escapingText), "text/plain", func(lset labels.Labels) labels.Labels {
					return escapeLabels(lset, a.esc)
				})
				sameSeries(t, want, series(t, rec.Body.Bytes(), ct))
				if a.esc != model.NoEscaping && !strings.HasPrefix(ct, ContentTypeProtobuf) && strings.Contains(rec.Body.String(), `"my.metric"`) {
					t.Errorf("quoted name written for a scraper that asked for %v:\n%s", a.esc, rec.Body)
				}
			})
		}
	}
}

// escapeLabels spells names as a scraper that takes no UTF-8 gets them.
func escapeLabels(lset labels.Labels, esc model.EscapingScheme) labels.Labels {
	if esc == model.NoEscaping {
		return lset
	}
	var b labels.ScratchBuilder
	lset.Range(func(l labels.Label) {
		if l.Name == model.MetricNameLabel {
			b.Add(l.Name, model.EscapeName(l.Value, esc))
			return
		}
		b.Add(model.EscapeName(l.Name, esc), l.Value)
	})
	b.Sort()
	return b.Labels()
}

func TestHasQuotedName(t *testing.T) {
	tests := map[string]bool{
		`up`:                          false,
		`up{a="b"}`:                   false,
		`up{a="b",c="{\"x\",\"y\"}"}`: false,
		`up{a=",\"q\"",b="c"}`:        false,
		`up{a="b",}`:                  false,
		`{"my.metric"}`:               true,
		`up{"a.b"="c"}`:               true,
		`up{a="b","c.d"="e"}`:         true,
		`up{a="b", "c.d"="e"}`:        true,
		`up{a="x\\",b="y"}`:           false,
		`up{a="x\\","b.c"="y"}`:       true,
	}
	for raw, want := range tests {
		if got := hasQuotedName([]byte(raw)); got != want {
			t.Errorf("hasQuotedName(%s) = %v, want %v", raw, got, want)
		}
	}
}

func TestScanNames_FindsTheLabelAmongNamesOnly(t *testing.T) {
	tests := []struct {
		raw           string
		quoted, named bool
	}{
		{`up`, false, false},
		{`exporter`, false, false},
		{`up{a="b"}`, false, false},
		{`up{exporter="b"}`, false, true},
		{`up{a="exporter"}`, false, false},
		{`up{a="x",exporter="y"}`, false, true},
		{`up{a = "x", exporter = "y"}`, false, true},
		{`up{	exporter	="y"}`, false, true},
		{`up{exporters="y"}`, false, false},
		{`up{a="\",exporter=\"",b="c"}`, false, false},
		{`up{a="x\\",exporter="y"}`, false, true},
		{`up{a="b",}`, false, false},
		{`up{a=""exporter="y"}`, false, true},       // the parser takes labels without commas
		{"up{a=\"\"\x00exporter=\"\"}", true, true}, // unsure: the labels are built
		{`up{"a.b"="c"}`, true, true},
		{`{"my.metric",a="b"}`, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			quoted, named := scanNames([]byte(tt.raw), "exporter")
			if quoted != tt.quoted || named != tt.named {
				t.Errorf("scanNames(%s) = %v, %v, want %v, %v", tt.raw, quoted, named, tt.quoted, tt.named)
			}
			if q, n := scanNames([]byte(tt.raw), ""); q != tt.quoted || n {
				t.Errorf("scanNames(%s, \"\") = %v, %v, want %v, false", tt.raw, q, n, tt.quoted)
			}
		})
	}
}
