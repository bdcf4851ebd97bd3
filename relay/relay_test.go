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
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/textparse"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"

	"github.com/baremetal-sd/baremetal_sd/collector"
)

// nodeExporterFixture is a real node_exporter exposition (see
// testdata/README.md for its origin and license).
func nodeExporterFixture(t testing.TB) []byte {
	t.Helper()
	return testdataFile(t, "node_exporter_e2e.txt")
}

func testdataFile(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// richText covers every classic type, escapes, special values and
// timestamps in the text format.
const richText = `# HELP http_requests_total Requests with "quotes", a \\ backslash and\na newline.
# TYPE http_requests_total counter
http_requests_total{code="200",path="/a\"b\\c\nd"} 1027 1700000000123
http_requests_total{code="500",path="/ü"} 3
# HELP temperature_celsius A gauge.
# TYPE temperature_celsius gauge
temperature_celsius{sensor="a"} -12.5
temperature_celsius{sensor="nan"} NaN
temperature_celsius{sensor="pinf"} +Inf
temperature_celsius{sensor="ninf"} -Inf
temperature_celsius{sensor="tiny"} 1e-300
# HELP rpc_duration_seconds A summary.
# TYPE rpc_duration_seconds summary
rpc_duration_seconds{service="x",quantile="0.5"} 0.05
rpc_duration_seconds{service="x",quantile="0.99"} 0.3
rpc_duration_seconds_sum{service="x"} 17.5
rpc_duration_seconds_count{service="x"} 210
# HELP req_size_bytes A histogram.
# TYPE req_size_bytes histogram
req_size_bytes_bucket{le="100"} 4
req_size_bytes_bucket{le="1000"} 9
req_size_bytes_bucket{le="+Inf"} 10
req_size_bytes_sum 4321
req_size_bytes_count 10
# TYPE mystery untyped
mystery{a="1"} 42
no_metadata_at_all 7
`

// richOM covers OpenMetrics: units, exemplars, info, stateset, created.
const richOM = `# TYPE build info
# HELP build Build information.
build_info{version="1.2.3"} 1
# TYPE jobs_seconds counter
# UNIT jobs_seconds seconds
# HELP jobs_seconds Time spent on jobs.
jobs_seconds_total{kind="a"} 10.0 1700000000.123 # {trace_id="abc"} 1.0 1700000000.001
jobs_seconds_created{kind="a"} 1699999999.0
# TYPE lat histogram
lat_bucket{le="0.1"} 1 # {trace_id="t1"} 0.05
lat_bucket{le="+Inf"} 3
lat_sum 2.5
lat_count 3
# TYPE state stateset
state{state="on"} 1
state{state="off"} 0
# TYPE weird_values gauge
weird_values{v="nan"} NaN
weird_values{v="inf"} +Inf
# EOF
`

// series parses a whole exposition (test side only) into name{labels}@ts ->
// value, dropping created series so that inputs and outputs of different
// formats compare.
func series(t *testing.T, body []byte, contentType string) map[string]float64 {
	t.Helper()
	return parseSeries(t, body, contentType, func(lset labels.Labels) labels.Labels { return lset })
}

func parseSeries(t *testing.T, body []byte, contentType string, fix func(labels.Labels) labels.Labels) map[string]float64 {
	t.Helper()
	p, err := textparse.New(body, contentType, nil, textparse.ParserOptions{OpenMetricsSkipSTSeries: true})
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
			t.Fatalf("output does not parse (%s): %v\n%s", contentType, err, truncate(string(body)))
		}
		if e != textparse.EntrySeries {
			continue
		}
		_, ts, v := p.Series()
		p.Labels(&lset)
		// An empty label value is no label, for Prometheus and here.
		lset = fix(labels.NewBuilder(lset).Labels())
		if strings.HasSuffix(lset.Get(model.MetricNameLabel), "_created") {
			continue
		}
		key := lset.String()
		if ts != nil {
			key += fmt.Sprintf("@%d", *ts)
		}
		out[key] = v
	}
}

func sameSeries(t *testing.T, want, got map[string]float64) {
	t.Helper()
	for k, v := range want {
		g, ok := got[k]
		switch {
		case !ok:
			t.Errorf("missing series %s", k)
		case math.IsNaN(v) && math.IsNaN(g):
		case v != g:
			t.Errorf("%s = %v, want %v", k, g, v)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected series %s", k)
		}
	}
}

// upstreamServer serves body with contentType, gzipped when asked.
func upstreamServer(t testing.TB, contentType string, body []byte) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", contentType)
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

func newRelay(t testing.TB, yamlCfg string) (*Relay, *collector.Relay) {
	t.Helper()
	cfg, err := ParseConfig([]byte(yamlCfg))
	if err != nil {
		t.Fatal(err)
	}
	m := collector.NewRelay(prometheus.NewRegistry())
	r, err := New(cfg, nil, m)
	if err != nil {
		t.Fatal(err)
	}
	return r, m
}

func scrape(t testing.TB, r http.Handler, path, accept string) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest("GET", path, nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	return rec
}

const acceptProto = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited"
const acceptOM = "application/openmetrics-text;version=1.0.0"
const acceptText = "text/plain;version=0.0.4"

func TestRelay_HelpAndEscapesSurvive(t *testing.T) {
	up := upstreamServer(t, "text/plain; version=0.0.4", []byte(richText))
	r, _ := newRelay(t, "exporters:\n  - name: node\n    url: "+up.URL+"\n")
	body := scrape(t, r, "/exporters/node/metrics", acceptText).Body.String()
	for _, want := range []string{
		`# HELP http_requests_total Requests with "quotes", a \\ backslash and\na newline.`,
		`# TYPE req_size_bytes histogram`,
		`http_requests_total{code="200",path="/a\"b\\c\nd"} 1027 1700000000123`,
		`temperature_celsius{sensor="nan"} NaN`,
		`temperature_celsius{sensor="pinf"} +Inf`,
	} {
		if !strings.Contains(body, want+"\n") {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestRelay_ExporterLabelOnlyOnAggregate: an exporter's own endpoint adds
// no label (Prometheus' target label tells the exporter, and a scraped label
// of the same name would become exported_exporter on every series); the
// aggregate endpoint adds exporter_label, in every output format.
func TestRelay_ExporterLabelOnlyOnAggregate(t *testing.T) {
	up := upstreamServer(t, "text/plain; version=0.0.4", []byte("# TYPE up gauge\nup{exporter=\"theirs\"} 1\n# TYPE other gauge\nother 2\n"))
	tests := []struct {
		name, cfg, path string
		want            []string
	}{
		{"own endpoint", "", "/exporters/mine/metrics",
			[]string{`{__name__="up", exporter="theirs"}`, `{__name__="other"}`}},
		{"own endpoint, custom label", "exporter_label: job_exporter\n", "/exporters/mine/metrics",
			[]string{`{__name__="up", exporter="theirs"}`, `{__name__="other"}`}},
		{"aggregate", "", "/exporters/metrics",
			[]string{`{__name__="up", exported_exporter="theirs", exporter="mine"}`, `{__name__="other", exporter="mine"}`}},
		{"aggregate, custom label", "exporter_label: job_exporter\n", "/exporters/metrics",
			[]string{`{__name__="up", exporter="theirs", job_exporter="mine"}`, `{__name__="other", job_exporter="mine"}`}},
		{"aggregate of one exporter without a label", "exporter_label: \"\"\n", "/exporters/metrics",
			[]string{`{__name__="up", exporter="theirs"}`, `{__name__="other"}`}},
	}
	for _, tt := range tests {
		// Prometheus 3's Accept takes names unescaped, where the direct
		// path searches for the label rather than walking the names.
		for _, accept := range []string{acceptText, acceptOM, acceptProto, acceptProm3} {
			t.Run(tt.name+"/"+accept, func(t *testing.T) {
				r, _ := newRelay(t, tt.cfg+"exporters:\n  - name: mine\n    url: "+up.URL+"\n")
				rec := scrape(t, r, tt.path, accept)
				if rec.Code != 200 {
					t.Fatalf("status %d: %s", rec.Code, rec.Body)
				}
				got := series(t, rec.Body.Bytes(), rec.Header().Get("Content-Type"))
				if keys := sorted(got); !slices.Equal(keys, slices.Sorted(slices.Values(tt.want))) {
					t.Errorf("series %q, want %q", keys, tt.want)
				}
			})
		}
	}
}

func TestRelay_AggregateWithoutExporterLabel(t *testing.T) {
	up := upstreamServer(t, "text/plain", []byte("same 1\n"))
	r, _ := newRelay(t, "exporter_label: \"\"\nexporters:\n  - name: a\n    url: "+up.URL+"\n  - name: b\n    url: "+up.URL+"\n")
	rec := scrape(t, r, "/exporters/metrics", acceptText)
	if rec.Code != 404 || !strings.Contains(rec.Body.String(), "exporter_label is empty") {
		t.Fatalf("aggregate without exporter_label: %d %q, want 404 with the reason", rec.Code, rec.Body)
	}
	if rec := scrape(t, r, "/exporters/a/metrics", acceptText); rec.Code != 200 || strings.TrimSpace(rec.Body.String()) != "same 1" {
		t.Errorf("own endpoint: %d %q", rec.Code, rec.Body)
	}
}

// TestContainsRare: containsRare answers as bytes.Contains, whichever byte
// of the label it stops at and wherever the label is.
func TestContainsRare(t *testing.T) {
	label := "exporter"
	texts := []string{"", "x", "exporter", "exporte", "xporter", "node_exporter_build_info", "a{exporter=\"x\"}", "a{b=\"x\",exporter=\"x\"}",
		"max_x_xx", "eexporterr", "exporterexporter", "rexporte", "exp", "a{\"exporter\"=\"1\"}", "texporter"}
	for _, text := range texts {
		for i := range len(label) {
			rare := label[i]
			if got, want := containsRare([]byte(text), label, rare), strings.Contains(text, label); got != want {
				t.Errorf("containsRare(%q, %q, %q) = %v, want %v", text, label, rare, got, want)
			}
		}
		if got, want := containsRare([]byte(text), label, '!'), strings.Contains(text, label); got != want {
			t.Errorf("containsRare(%q) with a byte not in the label = %v, want %v", text, got, want)
		}
	}
}

func TestAppendRawSample(t *testing.T) {
	tests := []struct{ raw, want string }{
		{`up`, `up{exporter="n"} 1`},
		{`up{}`, `up{exporter="n"} 1`},
		{`up{a="b"}`, `up{a="b",exporter="n"} 1`},
		{`up{a="b",}`, `up{a="b",exporter="n"} 1`},
		{`{"my.metric",a="b"}`, `{"my.metric",a="b",exporter="n"} 1`},
	}
	for _, tt := range tests {
		got := strings.TrimSuffix(string(appendRawSample(nil, []byte(tt.raw), []byte(`exporter="n"`), 1, nil, nil, false, model.NoEscaping)), "\n")
		if got != tt.want {
			t.Errorf("%s -> %s, want %s", tt.raw, got, tt.want)
		}
	}
}

func TestRelay_OpenMetricsExemplarsAndUnits(t *testing.T) {
	up := upstreamServer(t, ContentTypeOpenMetrics, []byte(richOM))
	r, _ := newRelay(t, "exporters:\n  - name: app\n    url: "+up.URL+"\n")
	body := scrape(t, r, "/exporters/app/metrics", acceptOM).Body.String()
	for _, want := range []string{
		"# UNIT jobs_seconds seconds\n",
		`jobs_seconds_total{kind="a"} 10 1700000000.123 # {trace_id="abc"} 1 1700000000.001` + "\n",
		`lat_bucket{le="0.1"} 1 # {trace_id="t1"} 0.05` + "\n",
		"# EOF\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("output lacks %q:\n%s", want, body)
		}
	}
	if !strings.HasSuffix(body, "# EOF\n") {
		t.Error("OpenMetrics output does not end with # EOF")
	}
}

func nativeHistogramFamily() *dto.MetricFamily {
	return &dto.MetricFamily{
		Name: proto.String("rpc_latency_seconds"),
		Help: proto.String("Native histogram."),
		Type: dto.MetricType_HISTOGRAM.Enum(),
		Metric: []*dto.Metric{{
			Label: []*dto.LabelPair{{Name: proto.String("service"), Value: proto.String("api")}},
			Histogram: &dto.Histogram{
				SampleCount: proto.Uint64(10), SampleSum: proto.Float64(3.5),
				Schema: proto.Int32(3), ZeroThreshold: proto.Float64(1e-128), ZeroCount: proto.Uint64(1),
				PositiveSpan:  []*dto.BucketSpan{{Offset: proto.Int32(0), Length: proto.Uint32(3)}},
				PositiveDelta: []int64{2, 1, -1},
				Exemplars: []*dto.Exemplar{{
					Label: []*dto.LabelPair{{Name: proto.String("trace_id"), Value: proto.String("xyz")}},
					Value: proto.Float64(0.4),
				}},
			},
		}},
	}
}

func TestRelay_NativeHistogramsProtobufToProtobuf(t *testing.T) {
	var body bytes.Buffer
	in := nativeHistogramFamily()
	if _, err := protodelim.MarshalTo(&body, in); err != nil {
		t.Fatal(err)
	}
	up := upstreamServer(t, ContentTypeProtobuf, body.Bytes())
	r, _ := newRelay(t, "exporters:\n  - name: app\n    url: "+up.URL+"\n")
	rec := scrape(t, r, "/exporters/app/metrics", acceptProto)
	if rec.Code != 200 {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	got := &dto.MetricFamily{}
	if err := protodelim.UnmarshalFrom(bytes.NewReader(rec.Body.Bytes()), got); err != nil {
		t.Fatal(err)
	}
	if want := nativeHistogramFamily(); !proto.Equal(got, want) {
		t.Fatalf("native histogram changed:\n got %v\nwant %v", got, want)
	}
}

func TestParseConfig_Refuses(t *testing.T) {
	tests := map[string]string{
		"unknown key":             "exporters:\n  - name: a\n    url: http://x\n    nope: 1\n",
		"reserved name":           "exporters:\n  - name: agent\n    url: http://x\n",
		"bad name":                "exporters:\n  - name: a/b\n    url: http://x\n",
		"duplicate":               "exporters:\n  - name: a\n    url: http://x\n  - name: a\n    url: http://y\n",
		"bad url":                 "exporters:\n  - name: a\n    url: ftp://x\n",
		"bad regex":               "exporters:\n  - name: a\n    url: http://x\n    metric_relabel_configs:\n      - regex: '('\n",
		"bad action":              "exporters:\n  - name: a\n    url: http://x\n    metric_relabel_configs:\n      - action: explode\n",
		"reserved exporter label": "exporter_label: \"__x\"\nexporters: []\n",
		"legacy exporter label":   "metric_name_validation_scheme: legacy\nexporter_label: \"1x\"\nexporters: []\n",
		"utf8 exporter label":     "exporter_label: \"my.exporter\"\nexporters: []\n",
		"utf8 exporter label 2":   "exporter_label: \"ex porter\"\nexporters: []\n",
		"bad scheme":              "metric_name_validation_scheme: ascii\nexporters: []\n",
		"negative limit":          "max_line_bytes: -1\nexporters: []\n",
		"huge frame limit":        "max_frame_bytes: 1000000000000\nexporters: []\n",
	}
	for name, cfg := range tests {
		if _, err := ParseConfig([]byte(cfg)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestRelay_HostileUpstreams(t *testing.T) {
	var lengthBomb []byte
	lengthBomb = binary.AppendUvarint(lengthBomb, 64<<30)
	lengthBomb = append(lengthBomb, 1, 2, 3)
	longLine := append([]byte("a{b=\""), bytes.Repeat([]byte("x"), 50<<20)...)
	garbage := make([]byte, 4096)
	for i := range garbage {
		garbage[i] = byte(i*7 + 3)
	}
	tests := []struct {
		name    string
		ct      string
		handler http.HandlerFunc
		status  int
	}{
		{"length bomb protobuf", ContentTypeProtobuf, func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(lengthBomb) }, 502},
		{"50 MB line", "text/plain", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(longLine) }, 502},
		{"binary garbage text", "text/plain", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(garbage) }, 502},
		{"binary garbage protobuf", ContentTypeProtobuf, func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(garbage) }, 502},
		{"never ending body", "text/plain", func(w http.ResponseWriter, r *http.Request) {
			w.WriteHeader(200)
			for r.Context().Err() == nil {
				if _, err := w.Write([]byte("# a comment that goes on\n")); err != nil {
					return
				}
			}
		}, 0},
		{"status 500", "text/plain", func(w http.ResponseWriter, _ *http.Request) { http.Error(w, "boom", 500) }, 502},
		{"bad content type", "application/json", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("{}")) }, 502},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", tt.ct)
				tt.handler(w, r)
			}))
			defer srv.Close()
			healthy := upstreamServer(t, "text/plain", []byte("ok 1\n"))
			r, m := newRelay(t, "exporters:\n  - name: bad\n    url: "+srv.URL+"\n    timeout: 1s\n  - name: good\n    url: "+healthy.URL+"\n")
			rec := scrape(t, r, "/exporters/bad/metrics", acceptText)
			// A body that never ends (status 0 here) is cut by the timeout
			// or the size cap, whichever comes first: 504 or 502.
			endless := tt.status == 0 && (rec.Code == 502 || rec.Code == 504)
			if !endless && rec.Code != tt.status {
				t.Fatalf("status %d, want %d (%s)", rec.Code, tt.status, truncate(rec.Body.String()))
			}
			if body := strings.TrimSpace(rec.Body.String()); strings.Contains(body, "\n") || body == "" {
				t.Errorf("reason is not one line: %q", truncate(body))
			}
			if v := testutil.ToFloat64(m.Up.WithLabelValues("bad")); v != 0 {
				t.Errorf("relay_up{bad} = %v", v)
			}
			if rec := scrape(t, r, "/exporters/good/metrics", acceptText); rec.Code != 200 {
				t.Fatalf("relay unhealthy after a hostile upstream: %d", rec.Code)
			}
		})
	}
	t.Run("refused", func(t *testing.T) {
		r, _ := newRelay(t, "exporters:\n  - name: gone\n    url: http://127.0.0.1:1/metrics\n")
		if rec := scrape(t, r, "/exporters/gone/metrics", ""); rec.Code != 502 || rec.Header().Get("Content-Type") == "" {
			t.Fatalf("refused upstream: %d", rec.Code)
		}
	})
}

func TestRelay_ScrapeTimeoutHeader(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	}))
	defer srv.Close()
	r, _ := newRelay(t, "exporters:\n  - name: slow\n    url: "+srv.URL+"\n    timeout: 30s\n")
	req := httptest.NewRequest("GET", "/exporters/slow/metrics", nil)
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", "0.2")
	rec := httptest.NewRecorder()
	start := time.Now()
	r.ServeHTTP(rec, req)
	if rec.Code != 504 {
		t.Fatalf("status %d, want 504", rec.Code)
	}
	if time.Since(start) > 4*time.Second {
		t.Fatal("the scraper's timeout did not bound the upstream request")
	}
}

func TestScrapeTimeout(t *testing.T) {
	const configured = 10 * time.Second
	tests := []struct {
		header string
		want   time.Duration
	}{
		{"", configured},
		{"garbage", configured},
		{"NaN", configured},
		{"-1", configured},
		{"0", configured},
		{"-0", configured},
		{"Inf", configured},
		{"+Inf", configured},
		{"-Inf", configured},
		{"1e10", configured},
		{"1e300", configured},
		{"1e400", configured}, // out of range: ParseFloat says +Inf
		{"10", 9500 * time.Millisecond},
		{"10.5", configured},
		{"10.4", 9900 * time.Millisecond},
		{"5", 4500 * time.Millisecond},
		{" 5 ", 4500 * time.Millisecond},
		{"1", 500 * time.Millisecond},
		{"0.2", 100 * time.Millisecond}, // the offset takes at most half
		{"1e-300", time.Nanosecond},
	}
	for _, tt := range tests {
		req := httptest.NewRequest("GET", "/exporters/x/metrics", nil)
		if tt.header != "" {
			req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", tt.header)
		}
		if got := scrapeTimeout(req, configured); got != tt.want {
			t.Errorf("header %q: timeout %v, want %v", tt.header, got, tt.want)
		}
	}
}

// TestRelay_RedirectsNotFollowedByDefault: a hostile upstream answers with a
// redirect to another local port. By default the relay must not fetch it
// (the other server sees no request) and fails the scrape with a one-line
// reason, counted as reason "redirect", on an exporter's endpoint and on
// the aggregate one; only an explicit follow_redirects: true follows it.
func TestRelay_RedirectsNotFollowedByDefault(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		elsewhere.Add(1)
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, "secret_from_another_port 1\n")
	}))
	defer other.Close()
	hostile := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, other.URL+"/internal", http.StatusFound)
	}))
	defer hostile.Close()

	tests := []struct {
		name, extra string
		path        string
		status      int
		followed    bool
	}{
		{"default", "", "/exporters/e/metrics", http.StatusBadGateway, false},
		{"default aggregate", "", "/exporters/metrics", http.StatusOK, false},
		{"follow_redirects false", "    follow_redirects: false\n", "/exporters/e/metrics", http.StatusBadGateway, false},
		{"follow_redirects true", "    follow_redirects: true\n", "/exporters/e/metrics", http.StatusOK, true},
		{"follow_redirects true aggregate", "    follow_redirects: true\n", "/exporters/metrics", http.StatusOK, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			elsewhere.Store(0)
			r, m := newRelay(t, "exporters:\n  - name: e\n    url: "+hostile.URL+"/metrics\n"+tt.extra)
			rec := scrape(t, r, tt.path, acceptText)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
			body := rec.Body.String()
			if got := elsewhere.Load(); tt.followed != (got > 0) {
				t.Fatalf("the server the redirect pointed at got %d requests, followed=%v", got, tt.followed)
			}
			if served := strings.Contains(body, "secret_from_another_port"); served != tt.followed {
				t.Fatalf("redirect target served=%v, want %v: %s", served, tt.followed, body)
			}
			if tt.followed {
				return
			}
			if v := testutil.ToFloat64(m.UpstreamErrors.WithLabelValues("e", "redirect")); v != 1 {
				t.Errorf("upstream errors{reason=redirect} = %v, want 1", v)
			}
			if v := testutil.ToFloat64(m.Up.WithLabelValues("e")); v != 0 {
				t.Errorf("up = %v, want 0", v)
			}
			if rec.Code == http.StatusBadGateway {
				reason := strings.TrimSpace(body)
				if strings.Contains(reason, "\n") || !strings.Contains(reason, "redirected") || !strings.Contains(reason, "follow_redirects") {
					t.Errorf("reason is not one clear line: %q", reason)
				}
			}
		})
	}
}

func TestParseConfig_HTTPClientDefaults(t *testing.T) {
	cfg, err := ParseConfig([]byte("exporters:\n  - name: a\n    url: http://x\n  - name: b\n    url: http://y\n    enable_http2: false\n    follow_redirects: true\n"))
	if err != nil {
		t.Fatal(err)
	}
	if a := cfg.Exporters[0].HTTPClientConfig; a.FollowRedirects || !a.EnableHTTP2 {
		t.Errorf("defaults not applied: follow_redirects %v (want false), enable_http2 %v (want true)", a.FollowRedirects, a.EnableHTTP2)
	}
	if b := cfg.Exporters[1].HTTPClientConfig; !b.FollowRedirects || b.EnableHTTP2 {
		t.Errorf("explicit enable_http2: false or follow_redirects: true lost: %+v", b)
	}
}

func TestRelay_Gzip(t *testing.T) {
	var zbody bytes.Buffer
	zw := gzip.NewWriter(&zbody)
	_, _ = zw.Write([]byte(richText))
	_ = zw.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			t.Error("relay did not ask upstream for gzip")
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		w.Header().Set("Content-Encoding", "gzip")
		_, _ = w.Write(zbody.Bytes())
	}))
	defer srv.Close()
	r, _ := newRelay(t, "exporters:\n  - name: z\n    url: "+srv.URL+"\n    enable_compression: true\n")
	req := httptest.NewRequest("GET", "/exporters/z/metrics", nil)
	req.Header.Set("Accept-Encoding", "gzip")
	rec := httptest.NewRecorder()
	r.ServeHTTP(rec, req)
	if rec.Header().Get("Content-Encoding") != "gzip" {
		t.Fatal("response not gzipped")
	}
	zr, err := gzip.NewReader(rec.Body)
	if err != nil {
		t.Fatal(err)
	}
	plain, _ := io.ReadAll(zr)
	sameSeries(t, series(t, []byte(richText), "text/plain"), series(t, plain, ContentTypeText))
}

func TestRelay_AggregateMergesFamilies(t *testing.T) {
	a := upstreamServer(t, "text/plain", []byte("# HELP shared_total Shared.\n# TYPE shared_total counter\nshared_total 1\n# TYPE only_a gauge\nonly_a 1\n"))
	b := upstreamServer(t, "text/plain", []byte("# HELP shared_total Shared.\n# TYPE shared_total counter\nshared_total 2\n# TYPE zz_b gauge\nzz_b 3\n"))
	r, m := newRelay(t, "exporters:\n  - name: a\n    url: "+a.URL+"\n  - name: b\n    url: "+b.URL+"\n  - name: down\n    url: http://127.0.0.1:1/\n")
	for _, accept := range []string{acceptText, acceptOM, acceptProto} {
		rec := scrape(t, r, "/exporters/metrics", accept)
		if rec.Code != 200 {
			t.Fatalf("%s: status %d: %s", accept, rec.Code, rec.Body)
		}
		ct := rec.Header().Get("Content-Type")
		got := series(t, rec.Body.Bytes(), ct)
		// Both exporters' series of the shared family are there, told
		// apart by the exporter label; the dead exporter is left out.
		want := map[string]float64{
			`{__name__="shared_total", exporter="a"}`: 1, `{__name__="shared_total", exporter="b"}`: 2,
			`{__name__="only_a", exporter="a"}`: 1, `{__name__="zz_b", exporter="b"}`: 3,
		}
		sameSeries(t, want, got)
		if !strings.HasPrefix(ct, ContentTypeProtobuf) && strings.Count(rec.Body.String(), "# TYPE shared_total counter") != 1 &&
			strings.Count(rec.Body.String(), "# TYPE shared counter") != 1 {
			t.Errorf("%s: shared family not merged into one:\n%s", ct, rec.Body)
		}
		for name, up := range map[string]float64{"a": 1, "b": 1, "down": 0} {
			if v := testutil.ToFloat64(m.Up.WithLabelValues(name)); v != up {
				t.Errorf("%s: relay_up{exporter=%q} = %v, want %v", ct, name, v, up)
			}
		}
		if v := testutil.ToFloat64(m.UpstreamErrors.WithLabelValues("down", "connect")); v == 0 {
			t.Errorf("%s: the dead exporter's connect error is not counted", ct)
		}
	}
}

// TestRelay_AggregateRepeatedFamilies: a family that an unsorted exporter
// sends again after others were written is dropped and counted, as a text
// exposition may not repeat one, unless it is bare samples without
// metadata; past maxNames remembered names it is written again instead of
// the set growing.
func TestRelay_AggregateRepeatedFamilies(t *testing.T) {
	body := "# TYPE z gauge\nz 1\n# TYPE b gauge\nb 1\nbare 1\n# TYPE a gauge\na 1\n# TYPE b gauge\nb{again=\"1\"} 2\nbare{again=\"1\"} 2\n"
	up := upstreamServer(t, "text/plain", []byte(body))
	for _, tt := range []struct {
		maxNames int
		want     []string
		dropped  float64
	}{
		{maxWrittenNames, []string{`{__name__="a", exporter="e"}`, `{__name__="b", exporter="e"}`, `{__name__="bare", again="1", exporter="e"}`, `{__name__="bare", exporter="e"}`, `{__name__="z", exporter="e"}`}, 1},
		{1, []string{`{__name__="a", exporter="e"}`, `{__name__="b", again="1", exporter="e"}`, `{__name__="b", exporter="e"}`, `{__name__="bare", again="1", exporter="e"}`, `{__name__="bare", exporter="e"}`, `{__name__="z", exporter="e"}`}, 0},
	} {
		t.Run(fmt.Sprint(tt.maxNames), func(t *testing.T) {
			r, m := newRelay(t, "exporters:\n  - name: e\n    url: "+up.URL+"\n")
			r.maxNames = tt.maxNames
			rec := scrape(t, r, "/exporters/metrics", acceptText)
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			if got := sorted(series(t, rec.Body.Bytes(), ContentTypeText)); !slices.Equal(got, tt.want) {
				t.Errorf("series %q, want %q", got, tt.want)
			}
			if v := testutil.ToFloat64(m.Dropped.WithLabelValues("e")); v != tt.dropped {
				t.Errorf("dropped_families_total = %v, want %v", v, tt.dropped)
			}
		})
	}
}

func TestNegotiate(t *testing.T) {
	const prom3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
	const prom3Text = "text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
	const prom2 = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
	tests := []struct {
		accept string
		format Format
		esc    model.EscapingScheme
		ct     string
	}{
		{"", FormatText, model.UnderscoreEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"},
		{prom2, FormatOpenMetrics, model.UnderscoreEscaping, ContentTypeOpenMetrics + "; escaping=underscores"},
		{prom3, FormatOpenMetrics, model.NoEscaping, ContentTypeOpenMetrics + "; escaping=allow-utf-8"},
		{prom3Text, FormatText, model.NoEscaping, "text/plain; version=1.0.0; charset=utf-8; escaping=allow-utf-8"},
		{"text/plain;version=1.0.0", FormatText, model.NoEscaping, "text/plain; version=1.0.0; charset=utf-8; escaping=allow-utf-8"},
		{"text/plain;version=1.0.0;escaping=dots", FormatText, model.DotsEscaping, "text/plain; version=1.0.0; charset=utf-8; escaping=dots"},
		{"text/plain;version=0.0.4", FormatText, model.UnderscoreEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"},
		{"text/plain;version=0.0.4;escaping=allow-utf-8", FormatText, model.NoEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=allow-utf-8"},
		{"text/plain;version=0.0.4;escaping=values", FormatText, model.ValueEncodingEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=values"},
		{"text/plain;version=0.0.4;escaping=nonsense", FormatText, model.UnderscoreEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"},
		{"text/plain;version=2.0.0,application/openmetrics-text;version=2.0.0;q=0.9,text/plain;q=0.1", FormatText, model.UnderscoreEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"},
		{acceptProto + ";q=0.9,text/plain;q=0.5", FormatProtobuf, model.UnderscoreEscaping, ContentTypeProtobuf + "; escaping=underscores"},
		{acceptProto + ";escaping=allow-utf-8", FormatProtobuf, model.NoEscaping, ContentTypeProtobuf + "; escaping=allow-utf-8"},
		{"application/json", FormatText, model.UnderscoreEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"},
		{"text/plain;q=0.2,application/openmetrics-text;version=1.0.0;q=0.1", FormatText, model.UnderscoreEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"},
		{"*/*;escaping=allow-utf-8", FormatText, model.NoEscaping, "text/plain; version=0.0.4; charset=utf-8; escaping=allow-utf-8"},
	}
	for _, tt := range tests {
		got := parseAccept(tt.accept).best()
		if got.format != tt.format || got.esc != tt.esc || got.contentType != tt.ct {
			t.Errorf("negotiate(%q) = %v, %v, %q; want %v, %v, %q", tt.accept, got.format, got.esc, got.contentType, tt.format, tt.esc, tt.ct)
		}
	}
}

func TestRelay_NotFound(t *testing.T) {
	r, _ := newRelay(t, "exporters: []\n")
	for _, p := range []string{"/exporters/nope/metrics", "/exporters/", "/other"} {
		if rec := scrape(t, r, p, ""); rec.Code != 404 {
			t.Errorf("%s: %d", p, rec.Code)
		}
	}
}

// sorted returns the keys of m in order, for readable failures.
func sorted(m map[string]float64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// TestPipeline_FailedRelayLeavesNothingBehind: a pipeline whose output
// failed halfway through the series split off a histogram is reused for
// the next scrape, which must not carry any of them.
func TestPipeline_FailedRelayLeavesNothingBehind(t *testing.T) {
	var b strings.Builder
	b.WriteString("# TYPE h histogram\n")
	for i := range 2000 {
		// No +Inf bucket: relayed as split series.
		fmt.Fprintf(&b, "h_bucket{i=\"%d\",le=\"1\"} 1\nh_sum{i=\"%d\"} 2\nh_count{i=\"%d\"} 1\n", i, i, i)
	}
	p := newPipeline("e", "", nil, defaultLimits)
	err := p.relay(strings.NewReader(b.String()), FormatText, "text/plain", FormatProtobuf, model.NoEscaping, failingWriter{})
	if err == nil {
		t.Fatal("relay into a failing writer succeeded")
	}
	var out bytes.Buffer
	if err := p.relay(strings.NewReader("# TYPE other gauge\nother 1\n"), FormatText, "text/plain", FormatProtobuf, model.NoEscaping, &out); err != nil {
		t.Fatal(err)
	}
	if got := sorted(series(t, out.Bytes(), ContentTypeProtobuf)); !slices.Equal(got, []string{`{__name__="other"}`}) {
		t.Errorf("series %q after a failed relay", got)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("client went away") }

// TestRelay_AnswersInTheUpstreamFormat checks the negotiation rule: the
// exporter is asked for the scraper's formats in the scraper's order, and
// its answer is relayed in its own format whenever the scraper takes that
// format at all, so nothing is converted; only a format the scraper does
// not take is converted, to the scraper's best. Content-Types are exact.
func TestRelay_AnswersInTheUpstreamFormat(t *testing.T) {
	const (
		prom2      = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
		prom3      = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
		protoFirst = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
		textOnly   = "text/plain;version=0.0.4;q=0.6,*/*;q=0.5"

		omUp    = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8"
		textUp  = "text/plain;version=0.0.4;escaping=allow-utf-8"
		protoUp = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;escaping=allow-utf-8"
	)
	textCT := "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"
	tests := []struct {
		name, upstream, accept string
		wantUpstreamAccept     string
		wantCT                 string
	}{
		{"text exporter, prometheus 2", "text", prom2, omUp + ";q=1," + textUp + ";q=0.9,*/*;q=0.1", textCT},
		{"text exporter, prometheus 3", "text", prom3, omUp + ";q=1," + textUp + ";q=0.9,*/*;q=0.1", "text/plain; version=1.0.0; charset=utf-8; escaping=allow-utf-8"},
		{"text exporter, protobuf first", "text", protoFirst, protoUp + ";q=1," + omUp + ";q=0.9," + textUp + ";q=0.8,*/*;q=0.1", textCT},
		{"text exporter, text only", "text", textOnly, textUp + ";q=1,*/*;q=0.1", textCT},
		{"text exporter, no Accept", "text", "", textUp + ";q=1,*/*;q=0.1", textCT},
		{"text exporter, protobuf only: converted", "text", acceptProto, protoUp + ";q=1,*/*;q=0.1", ContentTypeProtobuf + "; escaping=underscores"},
		{"openmetrics exporter, prometheus 3", "om", prom3, omUp + ";q=1," + textUp + ";q=0.9,*/*;q=0.1", ContentTypeOpenMetrics + "; escaping=allow-utf-8"},
		{"openmetrics exporter, text only: converted", "om", textOnly, textUp + ";q=1,*/*;q=0.1", textCT},
		{"protobuf exporter, protobuf first", "protobuf", protoFirst, protoUp + ";q=1," + omUp + ";q=0.9," + textUp + ";q=0.8,*/*;q=0.1", ContentTypeProtobuf + "; escaping=underscores"},
		{"protobuf exporter, prometheus 3: converted", "protobuf", prom3, omUp + ";q=1," + textUp + ";q=0.9,*/*;q=0.1", ContentTypeOpenMetrics + "; escaping=allow-utf-8"},
	}
	bodies := map[string]struct {
		ct   string
		body []byte
	}{
		"text":     {"text/plain; version=0.0.4", []byte(richText)},
		"om":       {"application/openmetrics-text; version=1.0.0", []byte(richOM)},
		"protobuf": {ContentTypeProtobuf, toProtoB(t, []byte(richText))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := bodies[tt.upstream]
			var asked atomic.Value
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				asked.Store(r.Header.Get("Accept"))
				w.Header().Set("Content-Type", up.ct)
				_, _ = w.Write(up.body)
			}))
			defer srv.Close()
			r, _ := newRelay(t, "exporters:\n  - name: e\n    url: "+srv.URL+"\n")
			rec := scrape(t, r, "/exporters/e/metrics", tt.accept)
			if rec.Code != http.StatusOK {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			if got := asked.Load(); got != tt.wantUpstreamAccept {
				t.Errorf("asked the exporter for\n%q, want\n%q", got, tt.wantUpstreamAccept)
			}
			ct := rec.Header().Get("Content-Type")
			if ct != tt.wantCT {
				t.Errorf("Content-Type %q, want %q", ct, tt.wantCT)
			}
			if tt.upstream == "protobuf" {
				sameSeries(t, series(t, []byte(richText), "text/plain"), series(t, rec.Body.Bytes(), ct))
				return
			}
			sameSeries(t, series(t, up.body, up.ct), series(t, rec.Body.Bytes(), ct))
		})
	}
}

// TestRelay_AggregateConcurrentScrapesAnswerAlike scrapes the aggregate
// endpoint of one Relay from several goroutines at once, again and again:
// every answer must be the first one's, byte for byte. The responses take
// the exporters' idle pipelines in turn; a buffer handed on while in use
// would show here (under -race, as a data race).
func TestRelay_AggregateConcurrentScrapesAnswerAlike(t *testing.T) {
	node, err := os.ReadFile("testdata/node_exporter_e2e.txt")
	if err != nil {
		t.Fatal(err)
	}
	a := upstreamServer(t, "text/plain", node)
	b := upstreamServer(t, "text/plain", node)
	r, _ := newRelay(t, "exporters:\n  - name: a\n    url: "+a.URL+"\n  - name: b\n    url: "+b.URL+"\n")
	for _, accept := range []string{acceptText, acceptProto} {
		t.Run(accept, func(t *testing.T) {
			want := scrape(t, r, "/exporters/metrics", accept).Body.Bytes()
			if len(want) < len(node) {
				t.Fatalf("aggregate of two answered %d bytes", len(want))
			}
			const scrapers, rounds = 3, 4
			got := make(chan []byte, scrapers*rounds)
			done := make(chan struct{}, scrapers)
			for range scrapers {
				go func() {
					defer func() { done <- struct{}{} }()
					for range rounds {
						req := httptest.NewRequest(http.MethodGet, "/exporters/metrics", nil)
						req.Header.Set("Accept", accept)
						rec := httptest.NewRecorder()
						r.ServeHTTP(rec, req)
						got <- rec.Body.Bytes()
					}
				}()
			}
			for range scrapers {
				<-done
			}
			close(got)
			for body := range got {
				if !bytes.Equal(body, want) {
					t.Fatalf("an aggregate answer differs from the first: %d bytes, want %d", len(body), len(want))
				}
			}
		})
	}
}
