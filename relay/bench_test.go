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
	stdgzip "compress/gzip"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/textparse"
)

// syntheticText is a large exposition: families of 100 series each, with
// the label shapes of a busy service.
func syntheticText(families, seriesPerFamily int) []byte {
	var b bytes.Buffer
	for f := 0; f < families; f++ {
		fmt.Fprintf(&b, "# HELP app_metric_%d_total A synthetic counter.\n# TYPE app_metric_%d_total counter\n", f, f)
		for s := 0; s < seriesPerFamily; s++ {
			fmt.Fprintf(&b, "app_metric_%d_total{instance=\"host-%d\",method=\"GET\",path=\"/api/v1/items/%d\",code=\"200\"} %d\n", f, s%7, s, f*s)
		}
	}
	return b.Bytes()
}

func countSamples(t testing.TB, body []byte, ct string) int {
	p, err := textparse.New(body, ct, nil, textparse.ParserOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for {
		e, err := p.Next()
		if errors.Is(err, io.EOF) {
			return n
		}
		if err != nil {
			t.Fatal(err)
		}
		if e == textparse.EntrySeries || e == textparse.EntryHistogram {
			n++
		}
	}
}

// Relabel rules of the benchmarks: oneLabel adds a label to every series,
// as the aggregate endpoint's exporter label or a target label would;
// realisticRules adds one and drops a few families by name, as
// examples/relay.yml does.
const (
	oneLabel = `
- target_label: env
  replacement: prod`
	realisticRules = oneLabel + `
- source_labels: [__name__]
  regex: (node_schedstat|app_metric_9)_.+
  action: drop`
	// labelRules need the labels of every series (a drop on a name and a
	// label, as in relaycompare), so a warm scrape is served by the series
	// cache.
	labelRules = oneLabel + `
- source_labels: [__name__, fstype]
  regex: node_filesystem_.+;tmpfs
  action: drop`
)

// BenchmarkRelay measures the pipeline alone (no network) for each pair
// of formats and payload, reporting samples per second (of the input, also
// those a rule drops); the baselines below run in the same invocation so
// ratios are measured side by side. Every relay case adds one label.
func BenchmarkRelay(b *testing.B) {
	payloads := map[string][]byte{
		"node_exporter": nodeExporterFixture(b),
		"large":         syntheticText(1000, 100),
		// relaycompare's 30k payload, which the default series cache holds.
		"30k": syntheticText(300, 100),
	}
	cases := []struct {
		name    string
		in, out Format
		rules   string
		cache   bool // relay through a series cache, warmed before timing
		// esc is the spelling of names for the scraper: relaycompare's
		// protobuf_to_text and protobuf_to_openmetrics scrapers (text
		// 0.0.4, Prometheus 2.42) take no UTF-8 names.
		esc model.EscapingScheme
	}{
		{"text_to_text", FormatText, FormatText, oneLabel, false, model.NoEscaping},
		{"text_to_text_relabel", FormatText, FormatText, realisticRules, false, model.NoEscaping},
		{"text_to_text_label_rules", FormatText, FormatText, labelRules, false, model.NoEscaping},
		{"text_to_text_label_rules_warm_cache", FormatText, FormatText, labelRules, true, model.NoEscaping},
		{"text_to_protobuf", FormatText, FormatProtobuf, oneLabel, false, model.NoEscaping},
		{"protobuf_to_protobuf_no_rules", FormatProtobuf, FormatProtobuf, "", false, model.NoEscaping},
		{"protobuf_to_protobuf", FormatProtobuf, FormatProtobuf, oneLabel, false, model.NoEscaping},
		{"protobuf_to_protobuf_label_rules", FormatProtobuf, FormatProtobuf, labelRules, false, model.NoEscaping},
		{"protobuf_to_protobuf_label_rules_warm_cache", FormatProtobuf, FormatProtobuf, labelRules, true, model.NoEscaping},
		{"protobuf_to_text_no_rules", FormatProtobuf, FormatText, "", false, model.UnderscoreEscaping},
		{"protobuf_to_text_label_rules_warm_cache", FormatProtobuf, FormatText, labelRules, true, model.UnderscoreEscaping},
		{"protobuf_to_openmetrics_no_rules", FormatProtobuf, FormatOpenMetrics, "", false, model.UnderscoreEscaping},
		{"protobuf_to_openmetrics_label_rules_warm_cache", FormatProtobuf, FormatOpenMetrics, labelRules, true, model.UnderscoreEscaping},
	}
	for _, pname := range []string{"node_exporter", "30k", "large"} {
		text := payloads[pname]
		samples := countSamples(b, text, "text/plain")
		proto := toProtoB(b, text)
		for _, c := range cases {
			b.Run(c.name+"/"+pname, func(b *testing.B) {
				input, ct := text, "text/plain; version=0.0.4"
				if c.in == FormatProtobuf {
					input, ct = proto, ContentTypeProtobuf
				}
				p := newPipeline("node", "", parseRules(b, c.rules), defaultLimits)
				relay := func() {
					if err := p.relay(bytes.NewReader(input), c.in, ct, c.out, c.esc, io.Discard); err != nil {
						b.Fatal(err)
					}
					if p.cache != nil {
						p.cache.endScrape()
					}
				}
				if c.cache {
					p.cache = newSeriesCache(DefaultSeriesCacheBytes)
					relay() // the first scrape fills the cache
				}
				b.SetBytes(int64(len(input)))
				b.ReportAllocs()
				for b.Loop() {
					relay()
				}
				b.ReportMetric(float64(samples)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
			})
		}
		b.Run("baseline_io_copy/"+pname, func(b *testing.B) {
			// Read through a 32 KiB buffer, as the relay reads its upstream;
			// hiding WriterTo keeps io.Copy from skipping the copy.
			buf := make([]byte, 32<<10)
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				_, _ = io.CopyBuffer(io.Discard, struct{ io.Reader }{bytes.NewReader(text)}, buf)
			}
			b.ReportMetric(float64(samples)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
		})
		b.Run("baseline_textparse_iterate/"+pname, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			var lset labels.Labels
			for b.Loop() {
				p, _ := textparse.New(text, "text/plain", nil, textparse.ParserOptions{})
				for {
					e, err := p.Next()
					if err != nil {
						break
					}
					if e == textparse.EntrySeries {
						p.Labels(&lset)
					}
				}
			}
			b.ReportMetric(float64(samples)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
		})
		b.Run("baseline_expfmt_decode_encode/"+pname, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			b.ReportAllocs()
			for b.Loop() {
				parser := expfmt.NewTextParser(model.UTF8Validation)
				fams, err := parser.TextToMetricFamilies(bytes.NewReader(text))
				if err != nil {
					b.Fatal(err)
				}
				for _, mf := range fams {
					_, _ = expfmt.MetricFamilyToText(io.Discard, mf)
				}
			}
			b.ReportMetric(float64(samples)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
		})
	}
}

func toProtoB(b testing.TB, text []byte) []byte {
	p := newPipeline("x", "", nil, defaultLimits)
	var buf bytes.Buffer
	if err := p.relay(bytes.NewReader(text), FormatText, "text/plain", FormatProtobuf, model.NoEscaping, &buf); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// BenchmarkScrapeLatency compares a direct scrape of a node_exporter-sized
// payload over loopback HTTP with the same scrape through the relay, without
// compression and with gzip (the upstream then gzips too, as node_exporter
// does when Prometheus asks).
func BenchmarkScrapeLatency(b *testing.B) {
	body := nodeExporterFixture(b)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		if strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			w.Header().Set("Content-Encoding", "gzip")
			zw := newGzipWriter(w)
			_, _ = zw.Write(body)
			_ = zw.Close()
			return
		}
		_, _ = w.Write(body)
	}))
	defer up.Close()
	cfg, err := ParseConfig([]byte("exporters:\n  - name: node\n    url: " + up.URL + "\n"))
	if err != nil {
		b.Fatal(err)
	}
	r, err := New(cfg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	relay := httptest.NewServer(r)
	defer relay.Close()
	identity := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	gzipped := &http.Client{}
	get := func(client *http.Client, url string) {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Accept", "text/plain;version=0.0.4")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	for _, c := range []struct {
		name   string
		client *http.Client
	}{{"identity", identity}, {"gzip", gzipped}} {
		b.Run(c.name+"/direct", func(b *testing.B) {
			for b.Loop() {
				get(c.client, up.URL)
			}
		})
		b.Run(c.name+"/through_relay", func(b *testing.B) {
			for b.Loop() {
				get(c.client, relay.URL+"/exporters/node/metrics")
			}
		})
	}
}

// repeatReader yields a text exposition of about n bytes, generated as it
// is read, so a 100 MB payload never sits in memory.
type repeatReader struct {
	remaining int
	family    int
	buf       []byte
	store     []byte // buf's storage, reused: the reader makes no garbage
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if len(r.buf) == 0 {
		if r.remaining <= 0 {
			return 0, io.EOF
		}
		b := append(r.store[:0], "# HELP "...)
		from := len(b)
		b = strconv.AppendInt(append(b, "big_"...), int64(r.family), 10)
		b = append(b, "_total"...)
		to := len(b)
		b = append(b, " Synthetic.\n# TYPE "...)
		b = append(b, b[from:to]...)
		b = append(b, " counter\n"...)
		for s := 0; s < 200; s++ {
			b = append(b, b[from:to]...)
			b = append(b, "{instance=\"host-"...)
			b = strconv.AppendInt(b, int64(s%7), 10)
			b = append(b, "\",path=\"/api/v1/items/"...)
			b = strconv.AppendInt(b, int64(s), 10)
			b = append(b, "\"} "...)
			b = strconv.AppendInt(b, int64(s), 10)
			b = append(b, '\n')
		}
		r.family++
		r.store, r.buf = b, b
		r.remaining -= len(r.buf)
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// BenchmarkScrapeLatencyNodeExporter compares scrapes of a real
// node_exporter (Debian's prometheus-node-exporter, started here on a
// loopback port) directly and through the relay, as Prometheus scrapes them:
// with gzip.
func BenchmarkScrapeLatencyNodeExporter(b *testing.B) {
	bin, err := exec.LookPath("prometheus-node-exporter")
	if err != nil {
		b.Fatal("prometheus-node-exporter not found: run scripts/install-test-deps.sh")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(bin, "--web.listen-address="+addr)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	url := "http://" + addr + "/metrics"
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("node_exporter did not come up: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cfg, err := ParseConfig([]byte("exporters:\n  - name: node\n    url: " + url + "\n"))
	if err != nil {
		b.Fatal(err)
	}
	r, err := New(cfg, nil, nil)
	if err != nil {
		b.Fatal(err)
	}
	relay := httptest.NewServer(r)
	defer relay.Close()
	client := &http.Client{}
	get := func(url string) {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Accept", "text/plain;version=0.0.4")
		resp, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			get(url)
		}
	})
	b.Run("through_relay", func(b *testing.B) {
		for b.Loop() {
			get(relay.URL + "/exporters/node/metrics")
		}
	})
}

// BenchmarkGzip compares the standard library's gzip with
// klauspost/compress, which the relay uses, at the levels worth
// considering, compressing and decompressing the relay's output. It reports
// the compressed size so that speed and ratio are read side by side.
func BenchmarkGzip(b *testing.B) {
	payloads := []struct {
		name string
		text []byte
	}{{"node_exporter", nodeExporterFixture(b)}, {"large", syntheticText(300, 100)}}
	for _, pl := range payloads {
		for _, level := range []int{1, 2, 3, 6} {
			b.Run(fmt.Sprintf("write/stdlib/level_%d/%s", level, pl.name), func(b *testing.B) {
				zw, _ := stdgzip.NewWriterLevel(io.Discard, level)
				benchmarkGzipWrite(b, pl.text, func(w io.Writer) io.WriteCloser { zw.Reset(w); return zw })
			})
			b.Run(fmt.Sprintf("write/klauspost/level_%d/%s", level, pl.name), func(b *testing.B) {
				zw, _ := gzip.NewWriterLevel(io.Discard, level)
				benchmarkGzipWrite(b, pl.text, func(w io.Writer) io.WriteCloser { zw.Reset(w); return zw })
			})
		}
		var z bytes.Buffer
		zw := newGzipWriter(&z)
		_, _ = zw.Write(pl.text)
		_ = zw.Close()
		b.Run("read/stdlib/"+pl.name, func(b *testing.B) {
			zr, _ := stdgzip.NewReader(bytes.NewReader(z.Bytes()))
			b.SetBytes(int64(len(pl.text)))
			for b.Loop() {
				_ = zr.Reset(bytes.NewReader(z.Bytes()))
				_, _ = io.Copy(io.Discard, zr)
			}
		})
		b.Run("read/klauspost/"+pl.name, func(b *testing.B) {
			zr, _ := gzip.NewReader(bytes.NewReader(z.Bytes()))
			b.SetBytes(int64(len(pl.text)))
			for b.Loop() {
				_ = zr.Reset(bytes.NewReader(z.Bytes()))
				_, _ = io.Copy(io.Discard, zr)
			}
		})
	}
}

// benchmarkGzipWrite compresses text in the relay's write sizes (chunks of
// about chunkBytes).
func benchmarkGzipWrite(b *testing.B, text []byte, reset func(io.Writer) io.WriteCloser) {
	var out byteCounter
	b.SetBytes(int64(len(text)))
	for b.Loop() {
		out.n = 0
		zw := reset(&out)
		for rest := text; len(rest) > 0; {
			n := min(len(rest), chunkBytes)
			_, _ = zw.Write(rest[:n])
			rest = rest[n:]
		}
		_ = zw.Close()
	}
	b.ReportMetric(float64(out.n), "compressed-bytes")
	b.ReportMetric(float64(len(text))/float64(out.n), "ratio")
}

// byteCounter counts what is written to it.
type byteCounter struct{ n int }

func (c *byteCounter) Write(p []byte) (int, error) {
	c.n += len(p)
	return len(p), nil
}

// BenchmarkSeriesCacheFootprint fills a series cache from one scrape with
// labelRules and reports what a series takes: the bytes the cache counts
// against series_cache_bytes, and the heap it really holds (HeapAlloc
// after a collection, cache and all). Run it with -benchtime=1x.
func BenchmarkSeriesCacheFootprint(b *testing.B) {
	text := map[string][]byte{"node_exporter": nodeExporterFixture(b), "30k": syntheticText(300, 100)}
	for _, pname := range []string{"node_exporter", "30k"} {
		for _, in := range []Format{FormatText, FormatProtobuf} {
			b.Run(pname+"/"+map[Format]string{FormatText: "text", FormatProtobuf: "protobuf"}[in], func(b *testing.B) {
				body, ct := text[pname], "text/plain; version=0.0.4"
				if in == FormatProtobuf {
					body, ct = toProtoB(b, body), ContentTypeProtobuf
				}
				p := newPipeline("e", "", parseRules(b, labelRules), defaultLimits)
				relay := func() {
					if err := p.relay(bytes.NewReader(body), in, ct, in, model.NoEscaping, io.Discard); err != nil {
						b.Fatal(err)
					}
				}
				relay() // the pipeline's buffers, which are not the cache's
				var accounted, held, series int
				for b.Loop() {
					var before, after runtime.MemStats
					runtime.GC()
					runtime.ReadMemStats(&before)
					p.cache = newSeriesCache(64 << 20)
					relay()
					runtime.GC()
					runtime.ReadMemStats(&after)
					series, accounted = p.cache.len(), p.cache.bytes
					held = int(after.HeapAlloc) - int(before.HeapAlloc)
				}
				b.ReportMetric(float64(series), "series")
				b.ReportMetric(float64(accounted)/float64(series), "accounted-B/series")
				b.ReportMetric(float64(held)/float64(series), "heap-B/series")
			})
		}
	}
}
