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
	"errors"
	"io"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"github.com/prometheus/prometheus/model/textparse"
	"go.yaml.in/yaml/v2"
	"google.golang.org/protobuf/encoding/protodelim"
)

// relabelText has a metric of every classic type, summaries and
// histograms with two metrics each, timestamps, and bucket bounds that
// Prometheus normalizes (le="1" reads as "1.0").
const relabelText = `# HELP reqs_total Requests.
# TYPE reqs_total counter
reqs_total{code="200",path="/a"} 10
reqs_total{code="500",path="/b"} 2 1700000000000
# HELP temp Temperature.
# TYPE temp gauge
temp{sensor="a"} 21.5
temp{sensor="b"} NaN
# HELP rpc A summary.
# TYPE rpc summary
rpc{service="x",quantile="0.5"} 0.05
rpc{service="x",quantile="0.99"} 0.3
rpc_sum{service="x"} 17.5
rpc_count{service="x"} 210
rpc{service="y",quantile="0.5"} 1
rpc{service="y",quantile="0.99"} 2
rpc_sum{service="y"} 3
rpc_count{service="y"} 4
# HELP lat A histogram.
# TYPE lat histogram
lat_bucket{handler="a",le="0.1"} 1
lat_bucket{handler="a",le="1"} 2
lat_bucket{handler="a",le="+Inf"} 3
lat_sum{handler="a"} 2.5
lat_count{handler="a"} 3
lat_bucket{handler="b",le="0.1"} 0
lat_bucket{handler="b",le="1"} 5
lat_bucket{handler="b",le="+Inf"} 7
lat_sum{handler="b"} 9
lat_count{handler="b"} 7
# TYPE plain untyped
plain{a="1"} 42
`

// relabelOM is relabelText in OpenMetrics.
const relabelOM = `# HELP reqs Requests.
# TYPE reqs counter
reqs_total{code="200",path="/a"} 10
reqs_total{code="500",path="/b"} 2 1700000000.000
# HELP temp Temperature.
# TYPE temp gauge
temp{sensor="a"} 21.5
temp{sensor="b"} NaN
# HELP rpc A summary.
# TYPE rpc summary
rpc{service="x",quantile="0.5"} 0.05
rpc{service="x",quantile="0.99"} 0.3
rpc_sum{service="x"} 17.5
rpc_count{service="x"} 210
rpc{service="y",quantile="0.5"} 1
rpc{service="y",quantile="0.99"} 2
rpc_sum{service="y"} 3
rpc_count{service="y"} 4
# HELP lat A histogram.
# TYPE lat histogram
lat_bucket{handler="a",le="0.1"} 1
lat_bucket{handler="a",le="1.0"} 2
lat_bucket{handler="a",le="+Inf"} 3
lat_sum{handler="a"} 2.5
lat_count{handler="a"} 3
lat_bucket{handler="b",le="0.1"} 0
lat_bucket{handler="b",le="1.0"} 5
lat_bucket{handler="b",le="+Inf"} 7
lat_sum{handler="b"} 9
lat_count{handler="b"} 7
# TYPE plain unknown
plain{a="1"} 42
# EOF
`

// textToProtobuf encodes a text exposition as delimited protobuf with
// expfmt's parser, which is independent of the relay's.
func textToProtobuf(t testing.TB, text string) []byte {
	t.Helper()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	for _, name := range sortedKeys(fams) {
		if _, err := protodelim.MarshalTo(&buf, fams[name]); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// relabeledSeries is what Prometheus stores from body after rules: every
// series its parser reads, through relabel.Process, as name{labels}@ts ->
// value. Native histograms count as one series with their count as value.
func relabeledSeries(t *testing.T, body []byte, ct string, rules []*relabel.Config) map[string]float64 {
	t.Helper()
	p, err := textparse.New(body, ct, nil, textparse.ParserOptions{OpenMetricsSkipSTSeries: true})
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]float64)
	var lset labels.Labels
	for {
		e, err := p.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatalf("does not parse (%s): %v\n%s", ct, err, truncate(string(body)))
		}
		var ts *int64
		var v float64
		switch e {
		case textparse.EntrySeries:
			_, ts, v = p.Series()
		case textparse.EntryHistogram:
			_, hts, ih, fhist := p.Histogram()
			ts = hts
			if ih != nil {
				v = float64(ih.Count)
			} else {
				v = fhist.Count
			}
		default:
			continue
		}
		p.Labels(&lset)
		lb := labels.NewBuilder(lset)
		if !relabel.ProcessBuilder(lb, rules...) {
			continue
		}
		lset = lb.Labels()
		key := lset.String()
		if ts != nil {
			key += "@" + strconv.FormatInt(*ts, 10)
		}
		out[key] = v
	}
}

func parseRules(t testing.TB, rules string) []*relabel.Config {
	t.Helper()
	var cfgs []*relabel.Config
	if err := yaml.UnmarshalStrict([]byte(rules), &cfgs); err != nil {
		t.Fatal(err)
	}
	for _, c := range cfgs {
		if err := c.Validate(model.UTF8Validation); err != nil {
			t.Fatal(err)
		}
	}
	return cfgs
}

// TestRelay_Relabeling compares what the relay writes after
// metric_relabel_configs with relabel.Process applied to the series
// Prometheus reads from the same input, for every input and output format:
// the result must be the same series with the same values, however the
// rules cut through summaries and histograms.
func TestRelay_Relabeling(t *testing.T) {
	inputs := []struct {
		name, ct string
		body     []byte
	}{
		{"text", "text/plain; version=0.0.4", []byte(relabelText)},
		{"openmetrics", ContentTypeOpenMetrics, []byte(relabelOM)},
		{"protobuf", ContentTypeProtobuf, textToProtobuf(t, relabelText)},
	}
	rules := []struct{ name, rules string }{
		{"none", ``},
		{"drop by name", `
- source_labels: [__name__]
  regex: temp
  action: drop`},
		{"keep one family", `
- source_labels: [__name__]
  regex: plain
  action: keep`},
		{"drop histogram buckets", `
- source_labels: [__name__]
  regex: lat_bucket
  action: drop`},
		{"drop summary sums", `
- source_labels: [__name__]
  regex: rpc_sum
  action: drop`},
		{"keep histogram sums and counts", `
- source_labels: [__name__]
  regex: lat_(sum|count)
  action: keep`},
		{"drop the +Inf bucket", `
- source_labels: [le]
  regex: '\+Inf'
  action: drop`},
		{"drop one bucket", `
- source_labels: [__name__, le]
  regex: lat_bucket;1\.0
  action: drop`},
		{"drop one quantile", `
- source_labels: [quantile]
  regex: '0\.99'
  action: drop`},
		{"respell a bound", `
- source_labels: [le]
  regex: '0\.1'
  target_label: le
  replacement: '0.10'`},
		{"one metric of a histogram", `
- source_labels: [__name__, handler]
  regex: 'lat_.*;b'
  action: drop`},
		{"label on sums and counts only", `
- source_labels: [__name__]
  regex: '(lat|rpc)_(sum|count)'
  target_label: part
  replacement: total`},
		{"rename every series of a histogram", `
- source_labels: [__name__]
  regex: 'lat_(.*)'
  target_label: __name__
  replacement: 'latency_$1'`},
		{"rename a histogram's buckets only", `
- source_labels: [__name__]
  regex: 'lat_bucket'
  target_label: __name__
  replacement: 'other_bucket'`},
		{"rename a gauge", `
- source_labels: [__name__]
  regex: temp
  target_label: __name__
  replacement: temperature`},
		{"add a label everywhere", `
- target_label: env
  replacement: prod`},
		{"replace into a new label", `
- source_labels: [sensor]
  regex: (a.*)
  target_label: kind
  replacement: k_$1`},
		{"labeldrop", `
- regex: code
  action: labeldrop`},
		{"labelmap", `
- regex: (handler|service)
  replacement: app_$1
  action: labelmap`},
		{"hashmod", `
- source_labels: [__name__]
  modulus: 2
  target_label: shard
  action: hashmod`},
		{"lowercase", `
- source_labels: [path]
  target_label: path
  action: uppercase`},
		{"keep by label", `
- source_labels: [handler]
  regex: a
  action: keep`},
	}
	outputs := []struct{ name, accept string }{
		{"text", acceptText},
		{"openmetrics", acceptOM},
		{"protobuf", acceptProto},
	}
	for _, in := range inputs {
		up := upstreamServer(t, in.ct, in.body)
		for _, rc := range rules {
			var cfgs []*relabel.Config
			cfgYAML := "exporters:\n  - name: e\n    url: " + up.URL + "\n"
			if rc.rules != "" {
				cfgs = parseRules(t, rc.rules)
				cfgYAML += "    metric_relabel_configs:" + indent(rc.rules, "      ") + "\n"
			}
			want := relabeledSeries(t, in.body, in.ct, cfgs)
			for _, out := range outputs {
				t.Run(in.name+"/"+rc.name+"/"+out.name, func(t *testing.T) {
					if rc.name == "respell a bound" && in.name == out.name {
						// Text to text and OpenMetrics to OpenMetrics copy
						// series under their family's TYPE line, and
						// Prometheus normalizes le="0.10" there back to
						// "0.1": a limit of relaying a histogram in a
						// text format that the README states.
						t.Skip("le respelled in place is normalized again by the scraper")
					}
					r, _ := newRelay(t, cfgYAML)
					rec := scrape(t, r, "/exporters/e/metrics", out.accept)
					if rec.Code != 200 {
						t.Fatalf("status %d: %s", rec.Code, rec.Body)
					}
					got := relabeledSeries(t, rec.Body.Bytes(), rec.Header().Get("Content-Type"), nil)
					sameSeries(t, want, got)
					if t.Failed() {
						t.Logf("output:\n%s", printable(rec.Body.Bytes(), out.name))
					}
				})
			}
		}
	}
}

// TestRelay_RelabelErrors: a rule that leaves a series without a name, or
// with a label name the validation scheme refuses, fails the scrape as in
// Prometheus: a 502 with the reason, for every input format and path.
func TestRelay_RelabelErrors(t *testing.T) {
	const dropName = `
      - source_labels: [__name__]
        regex: temp
        target_label: __name__
        replacement: ""`
	utf8Text := "# TYPE temp gauge\ntemp{\"label.with.dots\"=\"v\"} 1\n"
	tests := []struct {
		name, ct, scheme, rules string
		body                    []byte
	}{
		{"text, name dropped", "text/plain", "", dropName, []byte(relabelText)},
		{"openmetrics, name dropped", ContentTypeOpenMetrics, "", dropName, []byte(relabelOM)},
		{"protobuf, name dropped", ContentTypeProtobuf, "", dropName, textToProtobuf(t, relabelText)},
		{"text, invalid label name", "text/plain", "legacy", `
      - target_label: env
        replacement: prod`, []byte(utf8Text)},
		{"protobuf, invalid label name", ContentTypeProtobuf, "legacy", `
      - target_label: env
        replacement: prod`, textToProtobuf(t, utf8Text)},
		{"protobuf histogram bucket nameless", ContentTypeProtobuf, "", `
      - source_labels: [le]
        regex: '\+Inf'
        target_label: __name__
        replacement: ""`, textToProtobuf(t, relabelText)},
	}
	for _, tt := range tests {
		up := upstreamServer(t, tt.ct, tt.body)
		for _, accept := range []string{acceptText, acceptOM, acceptProto} {
			t.Run(tt.name+"/"+accept, func(t *testing.T) {
				cfg := "exporters:\n  - name: e\n    url: " + up.URL + "\n    metric_relabel_configs:" + tt.rules + "\n"
				if tt.scheme != "" {
					cfg = "metric_name_validation_scheme: " + tt.scheme + "\n" + cfg
				}
				r, m := newRelay(t, cfg)
				rec := scrape(t, r, "/exporters/e/metrics", accept)
				if rec.Code != 502 || !strings.Contains(rec.Body.String(), "metric_relabel_configs produced an invalid series") {
					t.Fatalf("status %d %q, want 502 with the relabel reason", rec.Code, rec.Body)
				}
				if v := testutil.ToFloat64(m.UpstreamErrors.WithLabelValues("e", "relabel")); v != 1 {
					t.Errorf("upstream_errors_total{reason=relabel} = %v", v)
				}
			})
		}
	}
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimPrefix(s, "\n"), "\n")
	for i, l := range lines {
		lines[i] = prefix + l
	}
	return "\n" + strings.Join(lines, "\n")
}

// printable shows an output in failure messages, protobuf as text.
func printable(body []byte, format string) string {
	if format != "protobuf" {
		return truncate(string(body))
	}
	var b strings.Builder
	r := bytes.NewReader(body)
	for {
		mf := new(dto.MetricFamily)
		if err := protodelim.UnmarshalFrom(r, mf); err != nil {
			break
		}
		b.WriteString(mf.String())
		b.WriteString("\n")
	}
	return truncate(b.String())
}
