package relay

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

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

// BenchmarkRelay measures the pipeline alone (no network) for each pair
// of formats and payload, reporting samples per second; the baselines below
// run in the same invocation so ratios are measured side by side.
func BenchmarkRelay(b *testing.B) {
	payloads := map[string][]byte{
		"node_exporter": nodeExporterFixture(b),
		"large":         syntheticText(1000, 100),
	}
	cases := []struct {
		name    string
		in, out Format
	}{
		{"text_to_text", FormatText, FormatText},
		{"text_to_protobuf", FormatText, FormatProtobuf},
		{"protobuf_to_protobuf", FormatProtobuf, FormatProtobuf},
	}
	for _, pname := range []string{"node_exporter", "large"} {
		text := payloads[pname]
		samples := countSamples(b, text, "text/plain")
		proto := toProtoB(b, text)
		for _, c := range cases {
			b.Run(c.name+"/"+pname, func(b *testing.B) {
				input, ct := text, "text/plain; version=0.0.4"
				if c.in == FormatProtobuf {
					input, ct = proto, ContentTypeProtobuf
				}
				p := newPipeline("node", "exporter", nil, DefaultMaxLineBytes)
				b.SetBytes(int64(len(input)))
				b.ReportAllocs()
				for b.Loop() {
					if err := p.relay(bytes.NewReader(input), c.in, ct, c.out, io.Discard, func() {}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(samples)*float64(b.N)/b.Elapsed().Seconds(), "samples/s")
			})
		}
		b.Run("baseline_io_copy/"+pname, func(b *testing.B) {
			b.SetBytes(int64(len(text)))
			for b.Loop() {
				_, _ = io.Copy(io.Discard, bytes.NewReader(text))
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
	p := newPipeline("x", "", nil, DefaultMaxLineBytes)
	var buf bytes.Buffer
	if err := p.relay(bytes.NewReader(text), FormatText, "text/plain", FormatProtobuf, &buf, func() {}); err != nil {
		b.Fatal(err)
	}
	return buf.Bytes()
}

// BenchmarkScrapeLatency compares a direct scrape of a node_exporter-sized
// payload over loopback HTTP with the same scrape through the relay.
func BenchmarkScrapeLatency(b *testing.B) {
	body := nodeExporterFixture(b)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
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
			get(up.URL)
		}
	})
	b.Run("through_relay", func(b *testing.B) {
		for b.Loop() {
			get(relay.URL + "/exporters/node/metrics")
		}
	})
}

// repeatReader yields a text exposition of about n bytes, generated as it
// is read, so a 100 MB payload never sits in memory.
type repeatReader struct {
	remaining int
	family    int
	buf       []byte
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if len(r.buf) == 0 {
		if r.remaining <= 0 {
			return 0, io.EOF
		}
		var b strings.Builder
		fmt.Fprintf(&b, "# HELP big_%d_total Synthetic.\n# TYPE big_%d_total counter\n", r.family, r.family)
		for s := 0; s < 200; s++ {
			fmt.Fprintf(&b, "big_%d_total{instance=\"host-%d\",path=\"/api/v1/items/%d\"} %d\n", r.family, s%7, s, s)
		}
		r.family++
		r.buf = []byte(b.String())
		r.remaining -= len(r.buf)
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}
