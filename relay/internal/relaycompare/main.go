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

// Command relaycompare measures, side by side in one run, what a scrape
// costs through the relay and through the alternatives an operator could
// run instead: a direct scrape of the exporter, a byte-for-byte reverse
// proxy (httputil.ReverseProxy), and a proxy that buffers the body and
// decodes it with expfmt before encoding it again (exporter_exporter's
// default, verify: true), and the aggregate endpoint over two exporters with
// two scrapes of one. It is the command behind the relay tables of
// BENCHMARKS.md and is not part of the release binary.
//
// Everything runs in this one process over loopback HTTP: a static
// exporter that serves precomputed bodies (text, or protobuf when the
// scraper prefers it, as node_exporter answers, and pre-compressed gzip when
// asked), the proxies, and a scraper that reads each body without
// decompressing it. The process' CPU time (user plus system, from
// getrusage) per scrape is reported as is and net of the direct scrape's,
// which is the exporter's and the scraper's share: the net figure is what
// the proxy in between costs. The aggregate endpoint asks each of its
// exporters, so its net figure takes off one direct scrape per exporter.
// Cases are measured in rounds, every variant
// once per round in turn, and the medians over rounds are reported, so
// that the machine's load changes all of them alike.
//
//	go run ./relay/internal/relaycompare --rounds=5
package main

import (
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/baremetal-sd/baremetal_sd/relay"
)

// Accept headers of the scrapers compared.
var accepts = []struct{ name, header string }{
	// Prometheus 2.42 (Debian's), default scrape settings.
	{"prom2", "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"},
	// Prometheus 3 default scrape_protocols.
	{"prom3", "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"},
	// scrape_protocols: [PrometheusText0.0.4].
	{"text", "text/plain;version=0.0.4;q=0.6,*/*;q=0.5"},
	// Prometheus 3 with native histograms on (PrometheusProto first).
	{"protobuf", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"},
}

// serves is what the static exporter answers in.
type serves int

const (
	servesBoth     serves = iota // protobuf when the scraper prefers it, text otherwise
	servesText                   // text only, as most exporters
	servesProtobuf               // protobuf only, whatever the Accept header
)

// scrapeCase is a scraper's Accept header and what the exporter serves.
type scrapeCase struct {
	name, accept string
	serves       serves
}

// conversions are the cases in which the scraper does not take what the
// exporter answers, so that the relay converts: a scraper that takes only
// protobuf in front of a text exporter, and Prometheus 2.42 (OpenMetrics
// first, then text) or a text-only scraper in front of a protobuf-only
// exporter. Each is compared with the same payload relayed text to text.
var conversions = []scrapeCase{
	{"text_to_protobuf", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited", servesText},
	{"protobuf_to_openmetrics", accepts[0].header, servesProtobuf},
	{"protobuf_to_text", accepts[2].header, servesProtobuf},
}

// twoRules are the relabel rules of the "2 rules" cases: a drop that needs
// two labels of every series, and a constant label.
const twoRules = `
    metric_relabel_configs:
      - source_labels: [__name__, fstype]
        regex: node_filesystem_.+;tmpfs
        action: drop
      - target_label: env
        replacement: prod
`

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	app := kingpin.New("relaycompare", "Measures scrapes through the relay side by side with a direct scrape, a byte proxy and buffer-and-decode.")
	fixture := app.Flag("fixture", "node_exporter exposition to relay.").Default("relay/testdata/node_exporter_e2e.txt").String()
	rounds := app.Flag("rounds", "Rounds; medians are taken over them.").Default("5").Int()
	minTime := app.Flag("min-time", "Least time each variant scrapes per round.").Default("150ms").Duration()
	minScrapes := app.Flag("min-scrapes", "Least scrapes of each variant per round.").Default("3").Int()
	only := app.Flag("run", "Measure only the cases whose name matches this regexp (payload/accept/encoding).").Default(".").Regexp()
	if _, err := app.Parse(args); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	node, err := os.ReadFile(*fixture)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	payloads := []*payload{}
	for _, p := range []struct {
		name string
		text []byte
	}{{"node", node}, {"30k", synthetic(300, 100)}} {
		pl, err := newPayload(p.name, p.text)
		if err != nil {
			fmt.Fprintf(os.Stderr, "payload %s: %v\n", p.name, err)
			return 1
		}
		payloads = append(payloads, pl)
	}
	c := &comparison{rounds: *rounds, minTime: *minTime, minScrapes: *minScrapes, only: *only}
	if err := c.run(payloads); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// payload is one exposition in every form the static exporter serves.
type payload struct {
	name                 string
	samples              int
	text, textGz         []byte
	protobuf, protobufGz []byte
}

func newPayload(name string, text []byte) (*payload, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(fams))
	for n := range fams {
		names = append(names, n)
	}
	slices.Sort(names)
	var pb bytes.Buffer
	enc := expfmt.NewEncoder(&pb, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, n := range names {
		if err := enc.Encode(fams[n]); err != nil {
			return nil, err
		}
	}
	p := &payload{name: name, text: text, protobuf: pb.Bytes()}
	p.textGz, p.protobufGz = gz(text), gz(p.protobuf)
	for _, line := range bytes.Split(text, []byte("\n")) {
		if len(line) > 0 && line[0] != '#' {
			p.samples++
		}
	}
	return p, nil
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	_, _ = zw.Write(b)
	_ = zw.Close()
	return buf.Bytes()
}

// synthetic is an exposition of families of series with the label shapes
// of a busy service.
func synthetic(families, series int) []byte {
	var b bytes.Buffer
	for f := range families {
		fmt.Fprintf(&b, "# HELP app_metric_%d_total A synthetic counter.\n# TYPE app_metric_%d_total counter\n", f, f)
		for s := range series {
			fmt.Fprintf(&b, "app_metric_%d_total{instance=\"host-%d\",method=\"GET\",path=\"/api/v1/items/%d\",code=\"200\"} %d\n", f, s%7, s, f*s)
		}
	}
	return b.Bytes()
}

// exporter serves a payload as node_exporter does, protobuf when the
// scraper prefers it and text otherwise, or in the one format it serves;
// gzip when asked.
func exporter(p *payload, serves serves) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, ct := p.text, string(expfmt.NewFormat(expfmt.TypeTextPlain))
		gzipped := strings.Contains(r.Header.Get("Accept-Encoding"), "gzip")
		protobuf := serves == servesProtobuf ||
			serves == servesBoth && expfmt.NegotiateAccept(r.Header, expfmt.DefaultAcceptedFormats()...).FormatType() == expfmt.TypeProtoDelim
		if protobuf {
			body, ct = p.protobuf, string(expfmt.NewFormat(expfmt.TypeProtoDelim))
			if gzipped {
				body = p.protobufGz
			}
		} else if gzipped {
			body = p.textGz
		}
		w.Header().Set("Content-Type", ct)
		if gzipped {
			w.Header().Set("Content-Encoding", "gzip")
		}
		_, _ = w.Write(body)
	})
}

// decodeProxy buffers the upstream body, decodes it with expfmt and encodes
// it again in the format the scraper negotiated: exporter_exporter with
// verify: true.
func decodeProxy(upstream string) http.Handler {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4}}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		req, _ := http.NewRequestWithContext(r.Context(), http.MethodGet, upstream, nil)
		req.Header.Set("Accept", r.Header.Get("Accept"))
		resp, err := client.Do(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		dec := expfmt.NewDecoder(bytes.NewReader(body), expfmt.ResponseFormat(resp.Header))
		var fams []*dto.MetricFamily
		for {
			mf := &dto.MetricFamily{}
			if err := dec.Decode(mf); err != nil {
				if !errors.Is(err, io.EOF) {
					http.Error(w, err.Error(), http.StatusBadGateway)
					return
				}
				break
			}
			fams = append(fams, mf)
		}
		format := expfmt.NegotiateAccept(r.Header, expfmt.DefaultOpenMetricsAcceptedFormats()...)
		w.Header().Set("Content-Type", string(format))
		var out io.Writer = w
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
			defer zw.Close()
			out = zw
		}
		enc := expfmt.NewEncoder(out, format)
		for _, mf := range fams {
			if err := enc.Encode(mf); err != nil {
				return
			}
		}
		if c, ok := enc.(expfmt.Closer); ok {
			_ = c.Close()
		}
	})
}

// variant is one way of scraping a payload.
type variant struct {
	name string
	url  string
}

// exporters is how many copies of the payload a scrape of v returns.
func (v variant) exporters() int {
	if v.name == "aggregate_of_2" {
		return 2
	}
	return 1
}

// sample is one variant's measurement in one round.
type sample struct {
	cpu, wall time.Duration // per scrape
	bytes     int
}

type comparison struct {
	rounds     int
	minTime    time.Duration
	minScrapes int
	only       *regexp.Regexp
}

// variants are the ways of scraping one payload, each behind its own
// server; the relay variants with and without rules scrape the same
// exporter.
func (c *comparison) variants(p *payload, serves serves, closers *[]func()) ([]variant, error) {
	up := httptest.NewServer(exporter(p, serves))
	target, _ := url.Parse(up.URL)
	byteProxy := httptest.NewServer(httputil.NewSingleHostReverseProxy(target))
	decode := httptest.NewServer(decodeProxy(up.URL))
	*closers = append(*closers, up.Close, byteProxy.Close, decode.Close)
	vs := []variant{
		{"direct", up.URL + "/metrics"},
		{"byte_proxy", byteProxy.URL + "/metrics"},
		{"buffer_decode", decode.URL + "/metrics"},
	}
	for _, rc := range []struct{ name, rules string }{{"relay_0_rules", ""}, {"relay_2_rules", twoRules}} {
		cfg, err := relay.ParseConfig([]byte("exporters:\n  - name: e\n    url: " + up.URL + "/metrics\n" + rc.rules))
		if err != nil {
			return nil, err
		}
		r, err := relay.New(cfg, nil, nil)
		if err != nil {
			return nil, err
		}
		srv := httptest.NewServer(r)
		*closers = append(*closers, srv.Close)
		vs = append(vs, variant{rc.name, srv.URL + relay.ExporterPath("e")})
	}
	// The aggregate endpoint over two exporters serving the payload, to
	// compare with two scrapes of relay_0_rules.
	cfg, err := relay.ParseConfig([]byte("exporters:\n  - name: a\n    url: " + up.URL + "/metrics\n  - name: b\n    url: " + up.URL + "/metrics\n"))
	if err != nil {
		return nil, err
	}
	r, err := relay.New(cfg, nil, nil)
	if err != nil {
		return nil, err
	}
	srv := httptest.NewServer(r)
	*closers = append(*closers, srv.Close)
	vs = append(vs, variant{"aggregate_of_2", srv.URL + "/exporters/metrics"})
	return vs, nil
}

func (c *comparison) run(payloads []*payload) error {
	var closers []func()
	defer func() {
		for _, f := range closers {
			f()
		}
	}()
	client := &http.Client{Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 4}}
	type group struct {
		name     string
		payload  *payload
		accept   string
		gzip     bool
		variants []variant
		results  [][]sample // per variant, per round
	}
	var groups []*group
	var cases []scrapeCase
	for _, a := range accepts {
		cases = append(cases, scrapeCase{a.name, a.header, servesBoth})
	}
	cases = append(cases, conversions...)
	for _, p := range payloads {
		for _, a := range cases {
			for _, enc := range []string{"identity", "gzip"} {
				name := p.name + "/" + a.name + "/" + enc
				if !c.only.MatchString(name) {
					continue
				}
				// Servers of their own per case: a relay's series cache then
				// sees one scraper, as it does in production.
				vs, err := c.variants(p, a.serves, &closers)
				if err != nil {
					return err
				}
				groups = append(groups, &group{name: name, payload: p, accept: a.accept, gzip: enc == "gzip", variants: vs, results: make([][]sample, len(vs))})
			}
		}
	}
	fmt.Fprintf(os.Stderr, "%d cases, %d rounds, GOMAXPROCS %d\n", len(groups), c.rounds, runtime.GOMAXPROCS(0))
	for round := range c.rounds {
		for _, g := range groups {
			for i, v := range g.variants {
				s, err := c.measure(client, v.url, g.accept, g.gzip)
				if err != nil {
					return fmt.Errorf("%s %s: %w", g.name, v.name, err)
				}
				g.results[i] = append(g.results[i], s)
			}
		}
		fmt.Fprintf(os.Stderr, "round %d done\n", round+1)
	}

	fmt.Println("CPU and latency per scrape, medians over rounds; net = CPU minus the direct scrape's (the exporter's and scraper's share), once per exporter asked.")
	fmt.Println()
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\tvariant\tcpu ms\tnet cpu ms\tlatency ms\tbytes\tnet M samples/s/core\t")
	type summary struct{ byteProxy, decode, relay0, relay2, aggregate float64 }
	sums := map[string]summary{}
	for _, g := range groups {
		direct := median(g.results[0], func(s sample) time.Duration { return s.cpu })
		var sum summary
		for i, v := range g.variants {
			cpu := median(g.results[i], func(s sample) time.Duration { return s.cpu })
			wall := median(g.results[i], func(s sample) time.Duration { return s.wall })
			// The aggregate endpoint's exporters each serve the payload
			// and its scraper reads them all: that is as many direct
			// scrapes, not one.
			net := cpu - time.Duration(v.exporters())*direct
			rate := "-"
			if samples := g.payload.samples * v.exporters(); i > 0 && net > 0 {
				rate = fmt.Sprintf("%.2f", float64(samples)/net.Seconds()/1e6)
			}
			fmt.Fprintf(tw, "%s\t%s\t%.2f\t%.2f\t%.2f\t%d\t%s\t\n", g.name, v.name, ms(cpu), ms(net), ms(wall), g.results[i][0].bytes, rate)
			switch v.name {
			case "byte_proxy":
				sum.byteProxy = ms(net)
			case "buffer_decode":
				sum.decode = ms(net)
			case "relay_0_rules":
				sum.relay0 = ms(net)
			case "relay_2_rules":
				sum.relay2 = ms(net)
			case "aggregate_of_2":
				sum.aggregate = ms(net)
			}
		}
		sums[g.name] = sum
	}
	_ = tw.Flush()
	fmt.Println()
	fmt.Println("Ratios of net CPU per scrape (relay with 2 rules unless said):")
	fmt.Println()
	tw = tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "case\trelay / byte proxy\tbuffer-decode / relay\t2 rules / 0 rules\taggregate / 2 x 0 rules\tvs text to text, 0 rules\tvs text to text, 2 rules\t")
	for _, g := range groups {
		s := sums[g.name]
		// A conversion is compared with its payload and encoding
		// relayed text to text, when that case was measured too.
		vsText0, vsText2 := "-", "-"
		if parts := strings.Split(g.name, "/"); isConversion(parts[1]) {
			if t, ok := sums[parts[0]+"/text/"+parts[2]]; ok {
				vsText0, vsText2 = ratio(s.relay0, t.relay0), ratio(s.relay2, t.relay2)
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", g.name, ratio(s.relay2, s.byteProxy), ratio(s.decode, s.relay2), ratio(s.relay2, s.relay0), ratio(s.aggregate, 2*s.relay0), vsText0, vsText2)
	}
	return tw.Flush()
}

// isConversion reports whether a case is one of the conversions.
func isConversion(name string) bool {
	return slices.ContainsFunc(conversions, func(c scrapeCase) bool { return c.name == name })
}

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2fx", a/b)
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(s []sample, f func(sample) time.Duration) time.Duration {
	v := make([]time.Duration, len(s))
	for i := range s {
		v[i] = f(s[i])
	}
	slices.Sort(v)
	if len(v) == 0 {
		return 0
	}
	return v[len(v)/2]
}

// measure scrapes url at least minScrapes times and for at least minTime,
// one scrape at a time as Prometheus scrapes a target, and returns the
// process CPU time and wall time per scrape.
func (c *comparison) measure(client *http.Client, url, accept string, gzipped bool) (sample, error) {
	runtime.GC() // the previous variant's garbage is not this one's cost
	cpu0 := processCPU()
	start := time.Now()
	n, size := 0, 0
	for n < c.minScrapes || time.Since(start) < c.minTime {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		req.Header.Set("Accept", accept)
		req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", "10")
		if gzipped {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		resp, err := client.Do(req)
		if err != nil {
			return sample{}, err
		}
		m, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			return sample{}, err
		}
		if resp.StatusCode != http.StatusOK {
			return sample{}, fmt.Errorf("status %s", resp.Status)
		}
		n, size = n+1, int(m)
	}
	wall := time.Since(start)
	cpu := processCPU() - cpu0
	return sample{cpu: cpu / time.Duration(n), wall: wall / time.Duration(n), bytes: size}, nil
}

// processCPU is the user and system CPU time of this process so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
