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

package tunnel

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
)

// benchPayloads are the scrape bodies of BenchmarkScrape: node_exporter's
// end-to-end fixture (the relay's copy) and 30,000 samples.
func benchPayloads(b *testing.B) map[string][]byte {
	b.Helper()
	node, err := os.ReadFile("../relay/testdata/node_exporter_e2e.txt")
	if err != nil {
		b.Fatal(err)
	}
	var big strings.Builder
	big.WriteString("# TYPE bench_samples gauge\n")
	for i := range 30000 {
		fmt.Fprintf(&big, "bench_samples{series=\"%d\",host=\"bench-host\"} %d\n", i, i)
	}
	return map[string][]byte{"node": node, "30k": []byte(big.String())}
}

// scrapeAccept is the Accept header of Prometheus 2.42's scrapes.
const scrapeAccept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"

// exposition answers like the agent's relay: the payload as text, gzipped
// at BestSpeed per response when the scraper takes gzip.
func exposition(body []byte) func(w http.ResponseWriter, r *http.Request) {
	gzips := sync.Pool{New: func() any { zw, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed); return zw }}
	return func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if !strings.Contains(r.Header.Get("Accept-Encoding"), "gzip") {
			_, _ = w.Write(body)
			return
		}
		w.Header().Set("Content-Encoding", "gzip")
		zw := gzips.Get().(*gzip.Writer)
		defer gzips.Put(zw)
		zw.Reset(w)
		_, _ = zw.Write(body)
		_ = zw.Close()
	}
}

// BenchmarkScrape scrapes one agent's relay listener (TLS, client
// certificate) directly and through the tunnel, side by side in one run,
// on a kept-alive connection as Prometheus does: with Prometheus' Accept
// and Accept-Encoding: gzip, the body gunzipped by the scraper ("gzip"),
// and without compression ("identity"), which shows the transport's own
// cost per byte. ns/op is the latency of one scrape; cpu-ns/op the CPU of
// the whole process (scraper, server and agent) per scrape, so the
// difference of the two is what the tunnel adds.
func BenchmarkScrape(b *testing.B) {
	payloads := benchPayloads(b)
	for _, name := range []string{"node", "30k"} {
		body := payloads[name]
		f := newFleet(b, ServerConfig{})
		port := f.startListenerAgent(b, "a1", "host-a", exposition(body))
		for _, enc := range []string{"gzip", "identity"} {
			for _, via := range []string{"direct", "tunnel"} {
				b.Run(name+"/"+enc+"/"+via, func(b *testing.B) {
					c := f.benchClient(via == "tunnel")
					target := "https://host-a:" + strconv.Itoa(port) + "/metrics"
					if via == "direct" {
						c.Transport.(*http.Transport).DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
							var d net.Dialer
							return d.DialContext(ctx, network, "127.0.0.1:"+strconv.Itoa(port))
						}
					}
					var zr gzip.Reader
					scrape := func() time.Duration {
						start := time.Now()
						req, err := http.NewRequest(http.MethodGet, target, nil)
						if err != nil {
							b.Fatal(err)
						}
						req.Header.Set("Accept", scrapeAccept)
						req.Header.Set("Accept-Encoding", enc)
						req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", "10")
						resp, err := c.Do(req)
						if err != nil {
							b.Fatal(err)
						}
						var r io.Reader = resp.Body
						if resp.Header.Get("Content-Encoding") == "gzip" {
							if err := zr.Reset(resp.Body); err != nil {
								b.Fatal(err)
							}
							r = &zr
						} else if enc == "gzip" {
							b.Fatal("the response is not gzipped")
						}
						n, _ := io.Copy(io.Discard, r)
						resp.Body.Close()
						if n != int64(len(body)) {
							b.Fatalf("read %d bytes, want %d", n, len(body))
						}
						return time.Since(start)
					}
					scrape()
					lat := make([]time.Duration, 0, b.N)
					cpu0 := cpuTime()
					b.ResetTimer()
					for range b.N {
						lat = append(lat, scrape())
					}
					b.StopTimer()
					sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
					b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "median-µs")
					b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/float64(b.N), "cpu-ns/op")
					c.CloseIdleConnections()
				})
			}
		}
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (f *fleet) benchClient(proxied bool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig:     &tls.Config{RootCAs: f.scraperRoots, Certificates: []tls.Certificate{f.scraper}},
		MaxIdleConnsPerHost: 1,
	}
	if proxied {
		u, _ := url.Parse(f.url)
		tr.Proxy = http.ProxyURL(u)
	} else {
		pool := x509.NewCertPool()
		pool.AddCert(f.authority.AgentCACertificate())
		tr.TLSClientConfig.RootCAs = pool
	}
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}
