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

package e2e

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// shardAgent is an agent registered by the test and serving its endpoints
// over TLS with its issued certificate, as the real agent does.
type shardAgent struct {
	id  string
	srv *httptest.Server
}

// TestServer_ShardedPrometheus runs three real Prometheus servers, each
// discovering its scrape shard (?shard=I&shards=3): every agent's targets
// are discovered and scraped by exactly one of them, the one the assignment
// function names. It then checks what growing to four shards would move,
// conditional requests against the real binary, and that the operator sees
// each Prometheus as a consumer.
func TestServer_ShardedPrometheus(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	s := startServer(t)
	enrollTok := createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m")

	const shards = 3
	// Register agents until every shard has two (ids are the server's, so
	// the split is not known in advance); bounded, and 30 agents make a
	// shard with fewer than two vanishingly unlikely.
	var agents []shardAgent
	perShard := make([]int, shards)
	for len(agents) < 30 && min(perShard[0], perShard[1], perShard[2]) < 2 {
		mux := http.NewServeMux()
		mux.HandleFunc("GET /metrics", textMetrics("# TYPE e2e_agent_info gauge\ne2e_agent_info 1\n"))
		mux.HandleFunc("GET /exporters/node/metrics", textMetrics("# TYPE node_load1 gauge\nnode_load1 0.5\n"))
		srv := httptest.NewUnstartedServer(mux)
		a := enroll(t, s, enrollTok, protocol.RegisterRequest{
			Hostname:  fmt.Sprintf("shard-host-%02d", len(agents)),
			Address:   "127.0.0.1",
			Port:      srv.Listener.Addr().(*net.TCPAddr).Port,
			Exporters: []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
		})
		// Like the real agent: serve only to certificates of the client CA.
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM([]byte(a.Resp.ClientCACertificate))
		srv.TLS = &tls.Config{
			Certificates: []tls.Certificate{a.Cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    pool,
			MinVersion:   tls.VersionTLS12,
		}
		srv.StartTLS()
		t.Cleanup(srv.Close)
		agents = append(agents, shardAgent{id: a.ID, srv: srv})
		perShard[httpsd.ScrapeShardOf(a.ID, shards)]++
	}
	if m := min(perShard[0], perShard[1], perShard[2]); m < 2 {
		t.Fatalf("agents per shard %v after %d registrations", perShard, len(agents))
	}

	sdURL := s.URL + protocol.PathDiscovery
	proms := make([]*testPrometheus, shards)
	// A fleet mid-upgrade: the shards alternate between Prometheus 2.42
	// and 3, whose http_sd clients differ.
	releases := prometheusReleases()
	for i := range proms {
		cert := issueCert(t, s.DataDir, fmt.Sprintf("prometheus-%d", i), "discovery")
		proms[i] = startPrometheusBinary(t, releases[i%len(releases)].Binary, fmt.Sprintf(`
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: baremetal
    tls_config:
      ca_file: %[7]s
      cert_file: %[2]s
      key_file: %[3]s
    http_sd_configs:
      - url: %[4]s?shard=%[5]d&shards=%[6]d
        refresh_interval: 1s
        tls_config:
          ca_file: %[1]s
          cert_file: %[2]s
          key_file: %[3]s
    relabel_configs:
      - source_labels: [__meta_baremetal_sd_exporter]
        target_label: exporter
`, cert.CAFile, cert.CertFile, cert.KeyFile, sdURL, i, shards, cert.AgentCAFile))
	}

	// Every agent's two targets (its own metrics and node) are up in the
	// Prometheus of its shard and absent from the others.
	waitFor(t, 90*time.Second, func() error {
		for i, p := range proms {
			ts, err := p.targets(ctx)
			if err != nil {
				return err
			}
			for _, a := range agents {
				got := agentTargets(ts.Active, "baremetal", a.id)
				owner := httpsd.ScrapeShardOf(a.id, shards)
				if owner != i {
					if len(got) != 0 {
						t.Fatalf("prometheus %d discovered agent %s of shard %d: %+v", i, a.id, owner, got)
					}
					continue
				}
				if len(got) != 2 {
					return fmt.Errorf("prometheus %d: %d targets of agent %s, want 2", i, len(got), a.id)
				}
				for _, tg := range got {
					if tg.Health != "up" {
						return fmt.Errorf("prometheus %d: target %s is %q (%s)", i, tg.ScrapeURL, tg.Health, tg.LastError)
					}
				}
			}
			if len(ts.Active) != 2*perShard[i] {
				t.Fatalf("prometheus %d has %d active targets, want %d", i, len(ts.Active), 2*perShard[i])
			}
		}
		return nil
	})
	// And the samples are there: each Prometheus scraped its own agents.
	waitFor(t, 30*time.Second, func() error {
		for i, p := range proms {
			samples, err := p.query(ctx, `up{job="baremetal"} == 1`)
			if err != nil {
				return err
			}
			if len(samples) != 2*perShard[i] {
				return fmt.Errorf("prometheus %d: %d targets up, want %d", i, len(samples), 2*perShard[i])
			}
		}
		return nil
	})

	t.Run("four shards", func(t *testing.T) {
		// The server serves the assignment the function computes...
		admin := issueCert(t, s.DataDir, "operator", "discovery")
		c := s.client(t, admin.KeyPair)
		seen := map[string]int{}
		for i := range 4 {
			resp := mustRequest(t, c, http.MethodGet, fmt.Sprintf("%s?shard=%d&shards=4", sdURL, i), "", nil, http.StatusOK)
			var groups []struct {
				Targets []string          `json:"targets"`
				Labels  map[string]string `json:"labels"`
			}
			if err := decodeStrict(resp.Body, &groups); err != nil {
				t.Fatal(err)
			}
			for _, g := range groups {
				id := g.Labels[protocol.MetaAgentID]
				if want := httpsd.ScrapeShardOf(id, 4); want != i {
					t.Errorf("shards=4: agent %s served to shard %d, want %d", id, i, want)
				}
				seen[id]++
			}
		}
		for _, a := range agents {
			if seen[a.id] != 2 {
				t.Errorf("shards=4: agent %s has %d groups, want 2", a.id, seen[a.id])
			}
		}
		// ...and that function moves about a quarter of many agents, none
		// between the three existing Prometheus servers.
		const ids = 10000
		moved := 0
		for n := range ids {
			id := fmt.Sprintf("agent-%05d", n)
			if from, to := httpsd.ScrapeShardOf(id, 3), httpsd.ScrapeShardOf(id, 4); from != to {
				moved++
				if to != 3 {
					t.Fatalf("%s moved from shard %d to %d, not to the new shard", id, from, to)
				}
			}
		}
		if frac := float64(moved) / ids; frac > 0.30 {
			t.Errorf("growing to four shards moves %.1f %% of agents, want at most 30 %%", 100*frac)
		}
	})

	t.Run("not modified", func(t *testing.T) {
		cert := issueCert(t, s.DataDir, "revalidator", "discovery")
		c := s.client(t, cert.KeyPair)
		url := sdURL + "?shard=0&shards=3"
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		tag := resp.Header.Get("ETag")
		req, _ = http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		req.Header.Set("If-None-Match", tag)
		resp, err = c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if tag == "" || resp.StatusCode != http.StatusNotModified {
			t.Errorf("If-None-Match %q: status %d, want 304", tag, resp.StatusCode)
		}
	})

	t.Run("consumers", func(t *testing.T) {
		viewer := issueCert(t, s.DataDir, "viewer", "discovery")
		c := s.client(t, viewer.KeyPair)
		metrics := string(mustRequest(t, c, http.MethodGet, s.URL+"/metrics", "", nil, http.StatusOK).Body)
		page := string(mustRequest(t, c, http.MethodGet, s.URL+"/", "", nil, http.StatusOK).Body)
		for i := range shards {
			series := fmt.Sprintf(`baremetal_sd_httpsd_consumer_requests_total{code="200",consumer="cert:prometheus-%d",shard="%d/%d"}`, i, i, shards)
			if !strings.Contains(metrics, series) {
				t.Errorf("/metrics lacks %s", series)
			}
			if !strings.Contains(page, fmt.Sprintf("<code>cert:prometheus-%d</code>", i)) {
				t.Errorf("status page does not list prometheus-%d", i)
			}
		}
	})
}
