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
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd/httpsdtest"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// checkSDBody checks an http_sd or file_sd body the way Prometheus'
// parser would and returns its groups: a JSON list (never null), no null
// groups, no keys besides targets and labels, at least one target each.
func checkSDBody(body []byte) ([]httpsdtest.TargetGroup, error) {
	var raw []json.RawMessage
	if err := json.Unmarshal(body, &raw); err != nil {
		return nil, fmt.Errorf("target groups %q: %w", truncate(body), err)
	}
	if raw == nil {
		return nil, fmt.Errorf("target groups are %q, want a list ([] when empty)", truncate(body))
	}
	for i, g := range raw {
		if string(bytes.TrimSpace(g)) == "null" {
			return nil, fmt.Errorf("target group %d is null", i)
		}
	}
	var groups []httpsdtest.TargetGroup
	if err := decodeStrict(body, &groups); err != nil {
		return nil, err
	}
	for i, g := range groups {
		if len(g.Targets) == 0 {
			return nil, fmt.Errorf("target group %d has no targets: %s", i, raw[i])
		}
	}
	return groups, nil
}

// getSD reads http_sd and checks the response the way Prometheus does:
// status 200 and Content-Type application/json, then checkSDBody.
func getSD(t testing.TB, c *http.Client, url, token string) ([]httpsdtest.TargetGroup, []byte) {
	t.Helper()
	resp := mustRequest(t, c, http.MethodGet, url, token, nil, http.StatusOK)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("GET %s: Content-Type %q, want application/json", url, ct)
	}
	groups, err := checkSDBody(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	return groups, resp.Body
}

// checkJSONError checks an error reply: JSON, with a message.
func checkJSONError(t testing.TB, what string, resp *response) {
	t.Helper()
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("%s: Content-Type %q, want application/json", what, ct)
	}
	var e protocol.ErrorResponse
	if err := decodeStrict(resp.Body, &e); err != nil || e.Error == "" {
		t.Errorf("%s: body %q is not a JSON error (%v)", what, resp.Body, err)
	}
}

func TestServer_FirstStartCreatesDataDir(t *testing.T) {
	t.Parallel()
	dataDir := filepath.Join(t.TempDir(), "data") // does not exist yet
	s := startServer(t, "--data.dir="+dataDir)

	files := []struct {
		name string
		perm fs.FileMode // 0: any
	}{
		{"ca.crt", 0},
		{"ca.key", 0o600},
		{"token.key", 0o600},
		{"agent-ca.crt", 0},
		{"agent-ca.key", 0o600},
		{"client-ca.crt", 0},
		{"client-ca.key", 0o600},
		{"client-cas.crt", 0},
		{"server.crt", 0},
		{"server.key", 0o600},
		{"web-config.yml", 0},
		{"registry.db", 0},
	}
	for _, f := range files {
		fi, err := os.Stat(filepath.Join(dataDir, f.name))
		if err != nil {
			t.Errorf("data dir after first start: %v", err)
			continue
		}
		if f.perm != 0 && fi.Mode().Perm() != f.perm {
			t.Errorf("%s has mode %o, want %o", f.name, fi.Mode().Perm(), f.perm)
		}
	}

	anon := s.client(t)
	caFile := s.caPEM(t)
	resp := mustRequest(t, anon, http.MethodGet, s.URL+protocol.PathCA, "", nil, http.StatusOK)
	if !bytes.Equal(resp.Body, caFile) {
		t.Errorf("GET /ca.crt differs from the data dir's ca.crt:\n%s\nwant:\n%s", resp.Body, caFile)
	}
	mustRequest(t, anon, http.MethodGet, s.URL+"/-/ready", "", nil, http.StatusOK)
	mustRequest(t, anon, http.MethodGet, s.URL+"/-/healthy", "", nil, http.StatusOK)

	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join(dataDir, name))
		if err != nil {
			t.Fatalf("read %s: %v", name, err)
		}
		return b
	}
	// The server reports when its certificates expire, read from the files.
	resp = mustRequest(t, anon, http.MethodGet, s.URL+"/metrics", "", nil, http.StatusOK)
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(resp.Body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	got := map[string]float64{}
	for _, m := range families["baremetal_sd_server_certificate_expiry_timestamp_seconds"].GetMetric() {
		for _, l := range m.GetLabel() {
			got[l.GetValue()] = m.GetGauge().GetValue()
		}
	}
	for name, file := range map[string]string{"ca": "ca.crt", "serving": "server.crt"} {
		block, _ := pem.Decode(read(file))
		if block == nil {
			t.Fatalf("%s holds no PEM block", file)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatalf("parse %s: %v", file, err)
		}
		if want := float64(cert.NotAfter.Unix()); got[name] != want {
			t.Errorf("certificate expiry of %q: %v, want %v (%s)", name, got[name], want, file)
		}
	}

	kept := []string{"ca.crt", "ca.key", "token.key", "agent-ca.crt", "agent-ca.key", "client-ca.crt", "client-ca.key", "server.crt", "server.key"}
	before := make(map[string][]byte, len(kept))
	for _, name := range kept {
		before[name] = read(name)
	}
	// Made with the first token key; it must still enroll after the restart.
	tok := createToken(t, dataDir, "--scope=enroll", "--ttl=10m")

	s.restart(t)

	for _, name := range kept {
		if !bytes.Equal(read(name), before[name]) {
			t.Errorf("%s changed across a restart", name)
		}
	}
	mustRequest(t, anon, http.MethodGet, s.URL+"/-/ready", "", nil, http.StatusOK)
	resp = mustRequest(t, anon, http.MethodGet, s.URL+protocol.PathCA, "", nil, http.StatusOK)
	if !bytes.Equal(resp.Body, before["ca.crt"]) {
		t.Errorf("GET /ca.crt after restart is not the first CA")
	}

	a := enroll(t, s, tok, protocol.RegisterRequest{Hostname: "after-restart", Address: "192.0.2.1", Port: 9955})
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(before["agent-ca.crt"])
	if _, err := a.Cert.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("agent certificate issued after restart does not chain to the first agent CA: %v", err)
	}
	if got := []byte(a.Resp.AgentCACertificate); !bytes.Equal(got, before["agent-ca.crt"]) {
		t.Errorf("register answered agent_ca_certificate %q, want the data dir's agent-ca.crt", got)
	}
	if got := []byte(a.Resp.ClientCACertificate); !bytes.Equal(got, before["client-ca.crt"]) {
		t.Errorf("register answered client_ca_certificate %q, want the data dir's client-ca.crt", got)
	}
}

// textMetrics serves a fixed body in the Prometheus text format.
func textMetrics(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		_, _ = io.WriteString(w, body)
	}
}

// agentTargets returns the targets of job that belong to agent id.
func agentTargets(ts []promTarget, job, id string) []promTarget {
	var out []promTarget
	for _, tg := range ts {
		if tg.ScrapePool == job && tg.DiscoveredLabels[protocol.MetaAgentID] == id {
			out = append(out, tg)
		}
	}
	return out
}

func TestServer_PrometheusDiscoversAgent(t *testing.T) {
	t.Parallel()
	for _, rel := range prometheusReleases() {
		t.Run(rel.Name, func(t *testing.T) {
			t.Parallel()
			testPrometheusDiscoversAgent(t, rel)
		})
	}
}

func testPrometheusDiscoversAgent(t *testing.T, rel prometheusRelease) {
	ctx := t.Context()
	s := startServer(t)
	enrollTok := createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m")

	// The agent's listener exists before it registers: its port is part of
	// the registration, and its certificate comes from the registration.
	mux := http.NewServeMux()
	mux.HandleFunc("GET /metrics", textMetrics("# TYPE e2e_agent_info gauge\ne2e_agent_info{version=\"test\"} 1\n"))
	mux.HandleFunc("GET /exporters/node/metrics", textMetrics(
		"# HELP node_load1 1m load average.\n# TYPE node_load1 gauge\nnode_load1 0.25\n"+
			"# TYPE node_e2e_scrapes_total counter\nnode_e2e_scrapes_total 7\n"))
	agentSrv := httptest.NewUnstartedServer(mux)
	port := agentSrv.Listener.Addr().(*net.TCPAddr).Port

	const hostname = "e2e-host-1"
	agent := enroll(t, s, enrollTok, protocol.RegisterRequest{
		Hostname:  hostname,
		Address:   "127.0.0.1",
		Port:      port,
		Labels:    map[string]string{"role": "db"},
		Exporters: []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
	})
	hb := mustRequest(t, agent.Client, http.MethodPost, s.URL+protocol.PathHeartbeat, "",
		protocol.HeartbeatRequest{Status: "ok"}, http.StatusOK)
	var hbResp protocol.HeartbeatResponse
	if err := decodeStrict(hb.Body, &hbResp); err != nil {
		t.Fatalf("heartbeat: %v", err)
	}
	if hbResp.TTLSeconds <= 0 || hbResp.HeartbeatIntervalSeconds <= 0 {
		t.Errorf("heartbeat answered %+v, want positive TTL and interval", hbResp)
	}

	// Like the real agent: serve with the issued certificate, only to
	// clients with a certificate from the client CA.
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM([]byte(agent.Resp.ClientCACertificate))
	agentSrv.TLS = &tls.Config{
		Certificates: []tls.Certificate{agent.Cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	}
	agentSrv.StartTLS()
	t.Cleanup(agentSrv.Close)

	promCert := issueCert(t, s.DataDir, "prometheus", "discovery")
	tokenFile := filepath.Join(t.TempDir(), "discovery.token")
	if err := os.WriteFile(tokenFile, []byte(createToken(t, s.DataDir, "--scope=discovery", "--ttl=10m")), 0o600); err != nil {
		t.Fatal(err)
	}
	sdURL := s.URL + protocol.PathDiscovery
	prom := startPrometheusBinary(t, rel.Binary, fmt.Sprintf(`
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  # Discovery and scraping with the one client certificate from cert
  # issue: the server is verified by the server CA, agents by the agent CA.
  - job_name: baremetal
    tls_config: &client_tls
      ca_file: %[6]s
      cert_file: %[2]s
      key_file: %[3]s
    http_sd_configs:
      - url: %[4]s
        refresh_interval: 1s
        tls_config:
          ca_file: %[1]s
          cert_file: %[2]s
          key_file: %[3]s
    # The agent's targets share its address: the exporter label keeps them
    # apart, or Prometheus drops all but one as duplicates.
    relabel_configs:
      - source_labels: [__meta_baremetal_sd_exporter]
        target_label: exporter
  # Discovery with a bearer token of scope discovery, node exporters only.
  - job_name: baremetal-token
    tls_config: *client_tls
    http_sd_configs:
      - url: %[4]s?exporter=node
        refresh_interval: 1s
        authorization:
          type: Bearer
          credentials_file: %[5]s
        tls_config:
          ca_file: %[1]s
`, promCert.CAFile, promCert.CertFile, promCert.KeyFile, sdURL, tokenFile, promCert.AgentCAFile))

	wantPaths := map[string]string{"agent": "/metrics", "node": "/exporters/node/metrics"}
	checkTargets := func(job string, want int) func() error {
		return func() error {
			ts, err := prom.targets(ctx)
			if err != nil {
				return err
			}
			got := agentTargets(ts.Active, job, agent.ID)
			if len(got) != want {
				return fmt.Errorf("job %s: %d targets of agent %s, want %d (active: %+v, dropped: %d)",
					job, len(got), agent.ID, want, ts.Active, len(ts.Dropped))
			}
			for _, tg := range got {
				dl := tg.DiscoveredLabels
				exp := dl[protocol.MetaExporter]
				path, ok := wantPaths[exp]
				if !ok {
					t.Fatalf("job %s: unexpected exporter %q in %v", job, exp, dl)
				}
				if dl[protocol.MetaHostname] != hostname || dl[protocol.MetaLabelPrefix+"role"] != "db" {
					t.Fatalf("job %s: discovered labels %v, want hostname %s and label role=db", job, dl, hostname)
				}
				if wantURL := fmt.Sprintf("https://127.0.0.1:%d%s", port, path); tg.ScrapeURL != wantURL {
					t.Fatalf("job %s: scrape URL %q, want %q", job, tg.ScrapeURL, wantURL)
				}
				if tg.Health != "up" {
					return fmt.Errorf("job %s: target %s is %q (last error %q)", job, tg.ScrapeURL, tg.Health, tg.LastError)
				}
			}
			return nil
		}
	}
	waitFor(t, 90*time.Second, checkTargets("baremetal", 2))
	waitFor(t, 30*time.Second, func() error {
		samples, err := prom.query(ctx, `up{job="baremetal"}`)
		if err != nil {
			return err
		}
		if len(samples) != 2 {
			return fmt.Errorf(`up{job="baremetal"}: %d samples, want 2: %v`, len(samples), samples)
		}
		for _, smp := range samples {
			if smp.Value != "1" {
				return fmt.Errorf(`up{job="baremetal"}: %v`, samples)
			}
		}
		return nil
	})
	waitFor(t, 30*time.Second, func() error {
		samples, err := prom.query(ctx, `node_load1{job="baremetal"}`)
		if err != nil {
			return err
		}
		if len(samples) != 1 || samples[0].Value != "0.25" {
			return fmt.Errorf("node_load1 relayed through the agent: %v, want one sample 0.25", samples)
		}
		return nil
	})

	// The bearer token job reads http_sd filtered to node exporters.
	waitFor(t, 60*time.Second, checkTargets("baremetal-token", 1))
	ts, err := prom.targets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := agentTargets(ts.Active, "baremetal-token", agent.ID); got[0].DiscoveredLabels[protocol.MetaExporter] != "node" {
		t.Errorf("?exporter=node gave Prometheus %v", got[0].DiscoveredLabels)
	}

	// Graceful deregistration drops the targets from every job.
	mustRequest(t, agent.Client, http.MethodDelete, s.URL+protocol.PathSelf, "", nil, http.StatusNoContent)
	waitFor(t, 60*time.Second, func() error {
		ts, err := prom.targets(ctx)
		if err != nil {
			return err
		}
		for _, tg := range ts.Active {
			if tg.DiscoveredLabels[protocol.MetaAgentID] == agent.ID {
				return fmt.Errorf("job %s still scrapes %s after deregistration", tg.ScrapePool, tg.ScrapeURL)
			}
		}
		return nil
	})
	// A deregistered agent's heartbeat is told to register again.
	hb = mustRequest(t, agent.Client, http.MethodPost, s.URL+protocol.PathHeartbeat, "", nil, 0)
	if hb.Status != http.StatusNotFound {
		t.Errorf("heartbeat after deregistration: status %d, want 404; body %s", hb.Status, hb.Body)
	}
}

// burstResult is what one registration burst saw.
type burstResult struct {
	acked    []string // agent ids of registrations answered 200
	attempts int64
	errs     []string // failures before the kill, which should not happen
}

// registrationBurst registers agents from workers goroutines until killAt
// registrations were acknowledged, then SIGKILLs the server while the other
// workers' requests are in flight, and collects every acknowledgement that
// still arrives. It is bounded by maxAttempts registrations and timeout.
func registrationBurst(t *testing.T, s *testServer, token string, round, killAt int) burstResult {
	t.Helper()
	const (
		workers     = 16
		maxAttempts = 2000
		timeout     = 60 * time.Second
	)
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	defer cancel()
	client := s.client(t)

	// The server decides the certificate's SANs, so one CSR per worker is
	// enough; each registration still gets its own hostname and agent id.
	csrs := make([]string, workers)
	for i := range csrs {
		csr, err := makeCSR(newKey(t), fmt.Sprintf("burst-%d", i))
		if err != nil {
			t.Fatal(err)
		}
		csrs[i] = csr
	}

	var (
		mu       sync.Mutex
		res      burstResult
		attempts atomic.Int64
		killed   atomic.Bool
		killErr  = make(chan error, 1)
		wg       sync.WaitGroup
	)
	for w := range workers {
		wg.Go(func() {
			for ctx.Err() == nil && !killed.Load() {
				n := attempts.Add(1)
				if n > maxAttempts {
					return
				}
				req := protocol.RegisterRequest{
					Hostname: fmt.Sprintf("burst-%d-%d", round, n),
					Address:  "192.0.2.1",
					Port:     9955,
					Labels:   map[string]string{"round": fmt.Sprint(round)},
					CSR:      csrs[w],
				}
				resp, err := doRequest(ctx, client, http.MethodPost, s.URL+protocol.PathRegister, token, req)
				if killed.Load() && (err != nil || resp.Status != http.StatusOK) {
					return // the kill cut this request off: not acknowledged
				}
				mu.Lock()
				switch {
				case err != nil:
					res.errs = append(res.errs, err.Error())
				case resp.Status != http.StatusOK:
					res.errs = append(res.errs, fmt.Sprintf("status %d: %s", resp.Status, resp.Body))
				default:
					var cr protocol.CertificateResponse
					if err := json.Unmarshal(resp.Body, &cr); err != nil || cr.AgentID == "" {
						res.errs = append(res.errs, fmt.Sprintf("200 without agent_id: %q", truncate(resp.Body)))
						break
					}
					res.acked = append(res.acked, cr.AgentID)
					if len(res.acked) == killAt && killed.CompareAndSwap(false, true) {
						// In flight: the other workers' requests.
						go func() { killErr <- s.kill() }()
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	res.attempts = min(attempts.Load(), maxAttempts)
	if !killed.Load() {
		t.Fatalf("round %d: only %d of %d attempted registrations were acknowledged within %s, never reached %d; errors: %v",
			round, len(res.acked), res.attempts, timeout, killAt, head(res.errs, 5))
	}
	if err := <-killErr; err != nil {
		t.Fatal(err)
	}
	return res
}

func head(s []string, n int) []string { return s[:min(n, len(s))] }

func TestServer_SIGKILLLosesNoAcknowledgedRegistration(t *testing.T) {
	t.Parallel()
	// A long flush interval: only the synchronous, durable write may save a
	// registration, never a lucky background flush. (The flush interval
	// may be at most a quarter of the TTL.)
	s := startServer(t, "--registry.flush-interval=1h", "--agent.ttl=4h", "--log.level=info")
	enrollTok := createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m")
	adminTok := createToken(t, s.DataDir, "--scope=admin", "--ttl=10m")

	acked := map[string]int{} // agent id -> round
	// Two kill points, so the second burst also runs on a store that
	// survived a crash.
	for round, killAt := range []int{200, 137} {
		res := registrationBurst(t, s, enrollTok, round, killAt)
		if len(res.errs) > 0 {
			t.Errorf("round %d: %d registrations failed before the kill, e.g. %v", round, len(res.errs), head(res.errs, 5))
		}
		for _, id := range res.acked {
			if r, dup := acked[id]; dup {
				t.Errorf("round %d: agent id %s was already handed out in round %d", round, id, r)
			}
			acked[id] = round
		}
		t.Logf("round %d: %d attempts, %d acknowledged before the server died", round, res.attempts, len(res.acked))

		s.restart(t)

		resp := mustRequest(t, s.client(t), http.MethodGet, s.URL+protocol.PathAgents, adminTok, nil, http.StatusOK)
		var agents []discovery.AgentView
		if err := json.Unmarshal(resp.Body, &agents); err != nil {
			t.Fatalf("list agents: %v", err)
		}
		stored := make(map[string]discovery.AgentView, len(agents))
		for _, a := range agents {
			stored[a.ID] = a
		}
		var lost []string
		for id := range acked {
			a, ok := stored[id]
			if !ok {
				lost = append(lost, id)
				continue
			}
			if a.CertSerial == "" || !strings.HasPrefix(a.Hostname, "burst-") {
				t.Errorf("agent %s came back incomplete: %+v", id, a)
			}
		}
		if len(lost) > 0 {
			sort.Strings(lost)
			t.Fatalf("after SIGKILL in round %d: %d of %d acknowledged registrations lost, e.g. %v",
				round, len(lost), len(acked), head(lost, 10))
		}
		t.Logf("round %d: all %d acknowledged registrations survived (%d stored)", round, len(acked), len(agents))
	}
}

func TestServer_FileSD(t *testing.T) {
	t.Parallel()
	sdDir := t.TempDir()
	sdFile := filepath.Join(sdDir, "targets.json")
	s := startServer(t, "--sd.file.path="+sdFile)
	discoveryTok := createToken(t, s.DataDir, "--scope=discovery", "--ttl=10m")
	client := s.client(t)

	// readFile returns the file's groups. A file that exists but does not
	// parse is fatal: Prometheus may read it at any moment, so it must be
	// replaced atomically, never written in place.
	readFile := func() ([]httpsdtest.TargetGroup, error) {
		data, err := os.ReadFile(sdFile)
		if errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if err != nil {
			t.Fatalf("read file_sd file: %v", err)
		}
		groups, err := checkSDBody(data)
		if err != nil {
			t.Fatalf("file_sd file: %v", err)
		}
		return groups, nil
	}
	// matches waits until the file holds what http_sd serves and contains
	// agent id (or no groups at all if id is empty).
	matches := func(id string) {
		t.Helper()
		waitFor(t, 30*time.Second, func() error {
			groups, err := readFile()
			if err != nil {
				return err
			}
			hasAgent := slices.ContainsFunc(groups, func(g httpsdtest.TargetGroup) bool { return g.Labels[protocol.MetaAgentID] == id })
			if id != "" && !hasAgent || id == "" && len(groups) > 0 {
				return fmt.Errorf("file_sd file has %d groups, waiting for agent %q", len(groups), id)
			}
			want, _ := getSD(t, client, s.URL+protocol.PathDiscovery, discoveryTok)
			if !reflect.DeepEqual(groups, want) {
				return fmt.Errorf("file_sd file differs from http_sd:\n%+v\nhttp_sd:\n%+v", groups, want)
			}
			return nil
		})
	}

	enrollTok := createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m")
	a := enroll(t, s, enrollTok, protocol.RegisterRequest{
		Hostname:  "filesd-1",
		Address:   "192.0.2.7",
		Port:      9955,
		Labels:    map[string]string{"dc": "east"},
		Exporters: []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
	})
	matches(a.ID)
	b := enroll(t, s, enrollTok, protocol.RegisterRequest{Hostname: "filesd-2", Address: "192.0.2.8", Port: 9955})
	matches(b.ID)

	mustRequest(t, a.Client, http.MethodDelete, s.URL+protocol.PathSelf, "", nil, http.StatusNoContent)
	mustRequest(t, b.Client, http.MethodDelete, s.URL+protocol.PathSelf, "", nil, http.StatusNoContent)
	matches("")

	// Atomic replacement leaves no temporary files behind.
	entries, err := os.ReadDir(sdDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "targets.json" {
			t.Errorf("file_sd directory holds %q besides targets.json", e.Name())
		}
	}
}

func TestServer_HTTPSDContract(t *testing.T) {
	t.Parallel()
	s := startServer(t, "--storage.backend=memory")
	sdURL := s.URL + protocol.PathDiscovery
	promCert := issueCert(t, s.DataDir, "prometheus", "discovery")
	adminCert := issueCert(t, s.DataDir, "operator", "admin")
	discoveryTok := createToken(t, s.DataDir, "--scope=discovery", "--ttl=10m")
	enrollTok := createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m")
	anon := s.client(t)
	prom := s.client(t, promCert.KeyPair)

	t.Run("empty", func(t *testing.T) {
		groups, body := getSD(t, prom, sdURL, "")
		if len(groups) != 0 || string(bytes.TrimSpace(body)) != "[]" {
			t.Errorf("empty registry: body %q, want []", body)
		}
	})

	db := enroll(t, s, enrollTok, protocol.RegisterRequest{
		Hostname: "db-1", Address: "192.0.2.10", Port: 9955,
		Labels: map[string]string{"role": "db"},
		Exporters: []protocol.Exporter{
			{Name: "node", Path: "/exporters/node/metrics"},
			{Name: "mysqld", Path: "/exporters/mysqld/metrics"},
		},
	})
	web := enroll(t, s, enrollTok, protocol.RegisterRequest{
		Hostname: "web-1", Address: "192.0.2.11", Port: 9955,
		Labels:    map[string]string{"role": "web"},
		Exporters: []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
	})
	byID := map[string]*testAgent{db.ID: db, web.ID: web}

	// groupKey names a group by agent hostname and exporter.
	groupKey := func(t *testing.T, g httpsdtest.TargetGroup) string {
		t.Helper()
		if _, ok := byID[g.Labels[protocol.MetaAgentID]]; !ok {
			t.Fatalf("group of unknown agent: %+v", g)
		}
		return g.Labels[protocol.MetaHostname] + "/" + g.Labels[protocol.MetaExporter]
	}
	filters := []struct {
		name  string
		query string
		want  []string
	}{
		{"all", "", []string{"db-1/agent", "db-1/mysqld", "db-1/node", "web-1/agent", "web-1/node"}},
		{"exporter", "?exporter=node", []string{"db-1/node", "web-1/node"}},
		{"exporters", "?exporter=node&exporter=mysqld", []string{"db-1/mysqld", "db-1/node", "web-1/node"}},
		{"label", "?label=role=db", []string{"db-1/agent", "db-1/mysqld", "db-1/node"}},
		{"exporter and label", "?exporter=node&label=role=web", []string{"web-1/node"}},
		{"no match", "?label=role=cache", nil},
	}
	for _, tc := range filters {
		t.Run("filter "+tc.name, func(t *testing.T) {
			groups, body := getSD(t, prom, sdURL+tc.query, "")
			var got []string
			for _, g := range groups {
				got = append(got, groupKey(t, g))
				wantTarget := fmt.Sprintf("%s:9955", map[string]string{"db-1": "192.0.2.10", "web-1": "192.0.2.11"}[g.Labels[protocol.MetaHostname]])
				if len(g.Targets) != 1 || g.Targets[0] != wantTarget {
					t.Errorf("group %s: targets %v, want [%s]", groupKey(t, g), g.Targets, wantTarget)
				}
				wantPath := "/metrics"
				if e := g.Labels[protocol.MetaExporter]; e != "agent" {
					wantPath = "/exporters/" + e + "/metrics"
				}
				if g.Labels["__metrics_path__"] != wantPath || g.Labels["__scheme__"] != "https" {
					t.Errorf("group %s: labels %v, want __metrics_path__ %s and __scheme__ https", groupKey(t, g), g.Labels, wantPath)
				}
				if g.Labels[protocol.MetaLabelPrefix+"role"] == "" {
					t.Errorf("group %s: no agent label role in %v", groupKey(t, g), g.Labels)
				}
			}
			sort.Strings(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("GET %s: groups %v, want %v", tc.query, got, tc.want)
			}
			if len(tc.want) == 0 && string(bytes.TrimSpace(body)) != "[]" {
				t.Errorf("GET %s: body %q, want []", tc.query, body)
			}
			// Stable order: Prometheus diffs successive refreshes.
			if _, again := getSD(t, prom, sdURL+tc.query, ""); !bytes.Equal(body, again) {
				t.Errorf("GET %s twice gave different bodies:\n%s\n%s", tc.query, body, again)
			}
		})
	}

	t.Run("bad query", func(t *testing.T) {
		for _, q := range []string{"?exporters=node", "?foo=bar", "?label=role", "?exporter="} {
			resp := mustRequest(t, prom, http.MethodGet, sdURL+q, "", nil, 0)
			if resp.Status != http.StatusBadRequest {
				t.Errorf("GET %s: status %d, want 400; body %s", q, resp.Status, resp.Body)
			}
			checkJSONError(t, "GET "+q, resp)
		}
	})

	t.Run("gzip", func(t *testing.T) {
		_, plain := getSD(t, prom, sdURL, "")
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, sdURL, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Set explicitly, so the transport does not decompress for us.
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := prom.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("Accept-Encoding gzip: status %d, Content-Encoding %q", resp.StatusCode, resp.Header.Get("Content-Encoding"))
		}
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		unzipped, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("gunzip http_sd: %v", err)
		}
		if !bytes.Equal(unzipped, plain) {
			t.Errorf("gzip body differs from the plain body:\n%s\n%s", unzipped, plain)
		}
	})

	t.Run("credentials", func(t *testing.T) {
		cases := []struct {
			name   string
			client *http.Client
			token  string
			want   []int
		}{
			{"anonymous", anon, "", []int{http.StatusUnauthorized}},
			{"garbage token", anon, "not-a-jwt", []int{http.StatusUnauthorized}},
			{"enroll token", anon, enrollTok, []int{http.StatusUnauthorized, http.StatusForbidden}},
			{"agent certificate", db.Client, "", []int{http.StatusForbidden}},
			{"discovery token", anon, discoveryTok, []int{http.StatusOK}},
			{"discovery certificate", prom, "", []int{http.StatusOK}},
			{"admin certificate", s.client(t, adminCert.KeyPair), "", []int{http.StatusOK}},
		}
		for _, tc := range cases {
			resp := mustRequest(t, tc.client, http.MethodGet, sdURL, tc.token, nil, 0)
			if !slices.Contains(tc.want, resp.Status) {
				t.Errorf("%s: status %d, want one of %v; body %s", tc.name, resp.Status, tc.want, resp.Body)
				continue
			}
			if resp.Status != http.StatusOK {
				checkJSONError(t, tc.name, resp)
			}
		}
	})

	t.Run("anonymous allowed by flag", func(t *testing.T) {
		open := startServer(t, "--storage.backend=memory", "--sd.allow-anonymous")
		groups, _ := getSD(t, open.client(t), open.URL+protocol.PathDiscovery, "")
		if len(groups) != 0 {
			t.Errorf("new server with --sd.allow-anonymous: %d groups, want none", len(groups))
		}
		// The flag opens http_sd only, never the admin API.
		resp := mustRequest(t, open.client(t), http.MethodGet, open.URL+protocol.PathAgents, "", nil, 0)
		if resp.Status != http.StatusUnauthorized && resp.Status != http.StatusForbidden {
			t.Errorf("admin list with --sd.allow-anonymous, anonymous: status %d, want 401 or 403", resp.Status)
		}
	})
}
