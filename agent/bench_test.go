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

package agent

import (
	"compress/gzip"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	toolkitweb "github.com/prometheus/exporter-toolkit/web"

	certauth "github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/relay"
	"github.com/baremetal-sd/baremetal_sd/web"
)

// benchNodeExporter is where Debian's prometheus-node-exporter installs it.
const benchNodeExporter = "/usr/bin/prometheus-node-exporter"

// scrapeAccept is the Accept header of the Prometheus the tests run
// (Debian's 2.42), so that both scrapes negotiate what a real one would.
const scrapeAccept = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"

// BenchmarkScrapeLatency_NodeExporter measures the goal "scrape latency
// through the agent within 1.5x of a direct scrape for a node_exporter
// payload": it scrapes the host's real node_exporter (default collectors)
// directly over HTTP and through the agent's serving stack (its own web
// config: TLS with the agent's certificate, a required client certificate
// of role discovery, the scraper check, the relay), as Prometheus does:
// keep-alive connections, its Accept header, gzip, the body read and
// decompressed. The two scrapes alternate in one loop so that both see the
// same machine and the same node_exporter; it reports the median of each
// and their ratio.
//
//	go test -run '^$' -bench ScrapeLatency_NodeExporter -count=5 ./agent/
func BenchmarkScrapeLatency_NodeExporter(b *testing.B) {
	if _, err := os.Stat(benchNodeExporter); err != nil {
		b.Skipf("%s is not installed: %v", benchNodeExporter, err)
	}
	nodeURL := startBenchNodeExporter(b)
	agentURL, scraper := startBenchAgent(b, nodeURL)
	direct := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableCompression: true}}
	b.Cleanup(direct.CloseIdleConnections)

	// Warm up: connections, the TLS handshake, node_exporter's first
	// collection. Prometheus keeps its connections too.
	var payload int64
	for range 3 {
		_, payload = benchScrape(b, direct, nodeURL)
		benchScrape(b, scraper, agentURL)
	}

	var directTimes, agentTimes []time.Duration
	i := 0
	for b.Loop() {
		if i%2 == 0 {
			d, _ := benchScrape(b, direct, nodeURL)
			a, _ := benchScrape(b, scraper, agentURL)
			directTimes, agentTimes = append(directTimes, d), append(agentTimes, a)
		} else {
			a, _ := benchScrape(b, scraper, agentURL)
			d, _ := benchScrape(b, direct, nodeURL)
			directTimes, agentTimes = append(directTimes, d), append(agentTimes, a)
		}
		i++
	}
	d, a := median(directTimes), median(agentTimes)
	b.ReportMetric(float64(d)/1e6, "direct-ms")
	b.ReportMetric(float64(a)/1e6, "agent-ms")
	b.ReportMetric(float64(a)/float64(d), "ratio")
	b.ReportMetric(float64(payload), "payload-bytes")
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// benchScrape scrapes url like Prometheus and returns how long it took and
// the size of the decompressed body.
func benchScrape(b *testing.B, c *http.Client, url string) (time.Duration, int64) {
	start := time.Now()
	req, err := http.NewRequestWithContext(b.Context(), http.MethodGet, url, nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Accept", scrapeAccept)
	req.Header.Set("Accept-Encoding", "gzip")
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", "10")
	resp, err := c.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b.Fatalf("scrape %s: %s", url, resp.Status)
	}
	var body io.Reader = resp.Body
	if resp.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			b.Fatalf("scrape %s: %v", url, err)
		}
		body = zr
	}
	n, err := io.Copy(io.Discard, body)
	if err != nil {
		b.Fatalf("scrape %s: %v", url, err)
	}
	return time.Since(start), n
}

// startBenchNodeExporter runs node_exporter on a free loopback port and
// waits until it answers.
func startBenchNodeExporter(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cmd := exec.Command(benchNodeExporter, "--web.listen-address="+addr)
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	url := "http://" + addr + "/metrics"
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		resp, err := c.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return url
			}
		}
		if time.Now().After(deadline) {
			b.Fatalf("node_exporter did not come up on %s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startBenchAgent serves upstream through the agent's serving stack, built
// as Run builds it, with a certificate from a test CA in a state directory.
// It returns the relay URL and a client holding a discovery certificate.
func startBenchAgent(b *testing.B, upstream string) (string, *http.Client) {
	b.Helper()
	dir := b.TempDir()
	key, _, err := loadOrCreateKey(filepath.Join(dir, KeyFile))
	if err != nil {
		b.Fatal(err)
	}
	ca := newTestCA(b)
	_, chain := ca.sign(b, "bench-agent", &key.PublicKey, time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	if err := os.WriteFile(filepath.Join(dir, CertFile), chain, 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CAFile), ca.pem, 0o644); err != nil {
		b.Fatal(err)
	}
	webConfig, err := writeWebConfig(dir)
	if err != nil {
		b.Fatal(err)
	}

	logger := slog.New(slog.DiscardHandler)
	rc, err := relay.ParseConfig(fmt.Appendf(nil, "exporters:\n  - name: node\n    url: %s\n", upstream))
	if err != nil {
		b.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, err := relay.New(rc, logger, collector.NewRelay(reg))
	if err != nil {
		b.Fatal(err)
	}
	exporters := []protocol.Exporter{{Name: "node", Path: relay.ExporterPath("node")}}
	h, err := newHandler(reg, r, exporters, logger)
	if err != nil {
		b.Fatal(err)
	}
	srv := newHTTPServer(scrapersOnly(h, collector.NewAgent(reg, registrationStates())), logger)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	systemd := false
	flags := &toolkitweb.FlagConfig{WebConfigFile: &webConfig, WebSystemdSocket: &systemd}
	go func() { _ = web.Serve(l, srv, flags, logger) }()
	b.Cleanup(func() { _ = srv.Close() })

	tr := &http.Transport{
		TLSClientConfig: &tls.Config{
			RootCAs:      ca.pool,
			Certificates: []tls.Certificate{ca.tlsCert(b, "prometheus", certauth.RoleDiscovery)},
		},
		// Prometheus decompresses the body itself; so does benchScrape.
		DisableCompression: true,
	}
	b.Cleanup(tr.CloseIdleConnections)
	return "https://" + l.Addr().String() + relay.ExporterPath("node"), &http.Client{Timeout: 10 * time.Second, Transport: tr}
}
