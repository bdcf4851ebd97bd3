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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// shardedExample is the example for a Prometheus server of a sharded
// fleet, in examples/.
const shardedExample = "prometheus-sharded.yml"

// shardedFleetJobs are the jobs of shardedExample that scrape agents, one
// target per agent of the shard each.
var shardedFleetJobs = []string{"node", "baremetal_sd_agent"}

// shardSedCommand is the sed command the example's header documents for
// the other servers, as written (for server 1), its continuation lines
// joined as the shell joins them.
func shardSedCommand(t *testing.T, example []byte) string {
	t.Helper()
	var cmd []string
	for line := range strings.Lines(string(example)) {
		text, ok := strings.CutPrefix(line, "#")
		if !ok {
			break // the header ends at the first line that is no comment
		}
		text = strings.TrimSpace(text)
		if len(cmd) == 0 && !strings.HasPrefix(text, "sed ") {
			continue
		}
		more := strings.HasSuffix(text, "\\")
		cmd = append(cmd, strings.TrimSuffix(text, "\\"))
		if !more {
			break
		}
	}
	if len(cmd) == 0 {
		t.Fatalf("examples/%s: its header has no sed line for the other servers", shardedExample)
	}
	return strings.Join(cmd, " ")
}

// shardConfig is the configuration of server i: the shipped file for
// server 0; for the others, what the documented sed line writes, run in
// dir next to a copy of the file, for server 1 as written and for the
// others with 1 replaced by their number, as the header says.
func shardConfig(t *testing.T, dir string, example []byte, sed string, i int) []byte {
	t.Helper()
	if i == 0 {
		return example
	}
	if err := os.WriteFile(filepath.Join(dir, shardedExample), example, 0o644); err != nil {
		t.Fatal(err)
	}
	if i > 1 {
		r := strings.NewReplacer(
			`shard=1\&`, fmt.Sprintf(`shard=%d\&`, i),
			"prometheus-1/", fmt.Sprintf("prometheus-%d/", i),
			`prometheus_shard: "1"`, fmt.Sprintf(`prometheus_shard: "%d"`, i))
		if sed = r.Replace(sed); !strings.Contains(sed, fmt.Sprintf("prometheus-%d/", i)) {
			t.Fatalf("examples/%s: its sed line %q does not name prometheus-1", shardedExample, sed)
		}
	}
	cmd := exec.CommandContext(t.Context(), "sh", "-c", sed)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("examples/%s: its sed line %q: %v\n%s", shardedExample, sed, err, out)
	}
	// It writes prometheus.yml, which startPrometheusIn replaces with
	// the deployed version.
	data, err := os.ReadFile(filepath.Join(dir, "prometheus.yml"))
	if err != nil {
		t.Fatalf("examples/%s: its sed line %q: %v", shardedExample, sed, err)
	}
	return data
}

// shardAgent is an agent registered by the test and serving its endpoints
// over TLS with its issued certificate, as the real agent does.
type shardAgent struct {
	id  string
	srv *httptest.Server
}

// TestServer_ShardedPrometheus runs three real Prometheus servers with
// the shipped examples/prometheus-sharded.yml, as its header says to deploy
// it: server 0 with the file, the others with what its documented sed line
// makes of it, each changed only where the header says (the server's and
// Prometheus' addresses; intervals shortened). Every job of each file has
// all its targets up, and each agent's targets are discovered and scraped
// by exactly one of them, the one the assignment function names. It then checks what growing to four shards would move,
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
	// The shipped examples/prometheus-sharded.yml runs server 0, and the
	// sed line its header documents makes the files of the others.
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(filepath.Join(root, "examples", shardedExample))
	if err != nil {
		t.Fatal(err)
	}
	sed := shardSedCommand(t, example)
	proms := make([]*testPrometheus, shards)
	jobs := make([][]string, shards)
	// A fleet mid-upgrade: the shards alternate between Prometheus 2.42
	// and 3, whose http_sd clients differ.
	releases := prometheusReleases()
	for i := range proms {
		// The layout of the example's header: the file with certs/
		// beside it, one certificate per Prometheus server.
		dir := t.TempDir()
		runCLI(t, "cert", "issue", "--data.dir="+s.DataDir, fmt.Sprintf("--name=prometheus-%d", i), "--out.dir="+filepath.Join(dir, "certs"))
		data := shardConfig(t, dir, example, sed, i)
		proms[i] = startPrometheusIn(t, releases[i%len(releases)].Binary, dir, func(addr string) string {
			cfg, names := deployExampleConfig(t, "examples/"+shardedExample+fmt.Sprintf(" (server %d)", i), data, s.Addr, addr)
			jobs[i] = names
			return cfg
		})
	}

	// Every job of each server's file has all its targets up, the fleet
	// jobs one per agent of its shard; the agents of other shards are
	// neither discovered nor scraped there.
	waitFor(t, 90*time.Second, func() error {
		for i, p := range proms {
			want := map[string]int{"prometheus": 1, "baremetal_sd_server": 1}
			for _, job := range shardedFleetJobs {
				want[job] = perShard[i]
			}
			if err := checkEveryJobUp(t, p, jobs[i], want); err != nil {
				return fmt.Errorf("prometheus %d: %w", i, err)
			}
			ts, err := p.targets(ctx)
			if err != nil {
				return err
			}
			for _, a := range agents {
				owner := httpsd.ScrapeShardOf(a.id, shards)
				for _, job := range shardedFleetJobs {
					got := agentTargets(ts.Active, job, a.id)
					switch {
					case owner != i && len(got) != 0:
						t.Fatalf("prometheus %d discovered agent %s of shard %d in job %s: %+v", i, a.id, owner, job, got)
					case owner == i && len(got) != 1:
						return fmt.Errorf("prometheus %d: job %s has %d targets of agent %s, want 1", i, job, len(got), a.id)
					}
				}
			}
			// And the samples are its own agents'.
			samples, err := p.query(ctx, `up{job=~"node|baremetal_sd_agent"} == 1`)
			if err != nil {
				return err
			}
			for _, smp := range samples {
				if owner := httpsd.ScrapeShardOf(smp.Metric["agent_id"], shards); owner != i {
					t.Fatalf("prometheus %d scraped agent %q of shard %d: %v", i, smp.Metric["agent_id"], owner, smp.Metric)
				}
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
