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
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd/httpsdtest"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// nodeExporterBinary is where Debian's prometheus-node-exporter package
// installs node_exporter.
const nodeExporterBinary = "/usr/bin/prometheus-node-exporter"

// agentProc is a `baremetal_sd agent` process started by a test.
type agentProc struct {
	// StateDir is the agent's --agent.state-dir.
	StateDir string
	// TokenFile is its --discovery.token-file.
	TokenFile string
	// Addr is its listen address, 127.0.0.1:PORT; URL is https://Addr.
	Addr, URL string
	Hostname  string

	args []string
	log  *logBuffer
	proc *process
}

// agentOptions configures startAgent.
type agentOptions struct {
	// Hostname defaults to e2e-agent.
	Hostname string
	// Token is written to the token file before the start; empty leaves the
	// file missing.
	Token string
	// RelayConfig is the relay configuration YAML; empty relays nothing.
	RelayConfig string
	// Labels become --agent.label flags.
	Labels map[string]string
	// Args are more command line flags.
	Args []string
}

// startAgent starts `baremetal_sd agent` against s on a free loopback port,
// verifying the server with its CA and registering 127.0.0.1 as the address
// to scrape. It does not wait for enrollment (see waitState). The
// process is killed when the test ends and its output logged if the test
// failed.
func startAgent(t *testing.T, s *testServer, o agentOptions) *agentProc {
	t.Helper()
	dir := t.TempDir()
	if o.Hostname == "" {
		o.Hostname = "e2e-agent"
	}
	a := &agentProc{
		StateDir:  filepath.Join(dir, "state"),
		TokenFile: filepath.Join(dir, "enroll.token"),
		Addr:      fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		Hostname:  o.Hostname,
		log:       &logBuffer{},
	}
	a.URL = "https://" + a.Addr
	if o.Token != "" {
		a.writeToken(t, o.Token)
	}
	a.args = []string{
		"agent",
		"--discovery.url=" + s.URL,
		"--discovery.ca-file=" + filepath.Join(s.DataDir, "ca.crt"),
		"--discovery.token-file=" + a.TokenFile,
		"--agent.state-dir=" + a.StateDir,
		"--web.listen-address=" + a.Addr,
		"--agent.hostname=" + a.Hostname,
		"--agent.address=127.0.0.1",
		"--log.level=debug",
	}
	if o.RelayConfig != "" {
		path := filepath.Join(dir, "relay.yml")
		if err := os.WriteFile(path, []byte(o.RelayConfig), 0o600); err != nil {
			t.Fatal(err)
		}
		a.args = append(a.args, "--relay.config.file="+path)
	}
	for k, v := range o.Labels {
		a.args = append(a.args, "--agent.label="+k+"="+v)
	}
	a.args = append(a.args, o.Args...)

	dumpOnFailure(t, "baremetal_sd agent "+a.Addr, a.log)
	t.Cleanup(func() {
		if a.proc != nil && !a.proc.exited() {
			_ = a.proc.kill()
		}
	})
	a.start(t)
	return a
}

// start runs the agent process with its command line.
func (a *agentProc) start(t *testing.T) {
	t.Helper()
	fmt.Fprintf(a.log, "=== %s %s\n", filepath.Base(binary), strings.Join(a.args, " "))
	a.proc = startProcess(t, "baremetal_sd agent", a.log, binary, a.args...)
}

func (a *agentProc) writeToken(t *testing.T, tok string) {
	t.Helper()
	if err := os.WriteFile(a.TokenFile, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// stop sends SIGTERM and fails the test unless the agent exits with status
// 0 within stopTimeout.
func (a *agentProc) stop(t *testing.T) {
	t.Helper()
	if err := a.proc.terminate(stopTimeout); err != nil {
		t.Errorf("stop agent: %v", err)
	}
}

// id reads the agent id from the agent's state directory.
func (a *agentProc) id(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(a.StateDir, "agent.json"))
	if err != nil {
		t.Fatalf("agent state: %v", err)
	}
	var st struct {
		AgentID string `json:"agent_id"`
	}
	if err := json.Unmarshal(data, &st); err != nil || st.AgentID == "" {
		t.Fatalf("agent state %s: no agent_id (%v)", data, err)
	}
	return st.AgentID
}

// metric returns the value of one series of the agent's own /metrics, read
// over mTLS with c.
func (a *agentProc) metric(ctx context.Context, c *http.Client, series string) (float64, error) {
	resp, err := doRequest(ctx, c, http.MethodGet, a.URL+"/metrics", "", nil)
	if err != nil {
		return 0, err
	}
	if resp.Status != http.StatusOK {
		return 0, fmt.Errorf("agent /metrics: status %d", resp.Status)
	}
	sc := bufio.NewScanner(strings.NewReader(string(resp.Body)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("agent /metrics has no series %s", series)
}

// waitState waits until the agent serves and reports state (see
// the agent's registrationStates) in baremetal_sd_agent_registration_state.
func (a *agentProc) waitState(t *testing.T, c *http.Client, state string) {
	t.Helper()
	series := `baremetal_sd_agent_registration_state{state="` + state + `"}`
	waitFor(t, startTimeout, func() error {
		if a.proc.exited() {
			t.Fatalf("agent exited: %v", a.proc.err)
		}
		v, err := a.metric(t.Context(), c, series)
		if err != nil {
			return err
		}
		if v != 1 {
			return fmt.Errorf("%s = %v, want 1", series, v)
		}
		return nil
	})
}

// sdTargetsOf returns the http_sd groups of agent id.
func sdTargetsOf(groups []httpsdtest.TargetGroup, id string) []httpsdtest.TargetGroup {
	var out []httpsdtest.TargetGroup
	for _, g := range groups {
		if g.Labels[protocol.MetaAgentID] == id {
			out = append(out, g)
		}
	}
	return out
}

// agentHarness is a server, a client certificate for Prometheus (which
// reads http_sd and scrapes agents) and clients using it.
type agentHarness struct {
	s *testServer
	// prom is the certificate from `cert issue --role=discovery`.
	prom clientCert
	// scraper scrapes agents with prom, trusting the agent CA; sdClient
	// reads http_sd with it, trusting the server CA.
	scraper, sdClient *http.Client
}

func newAgentHarness(t *testing.T, serverArgs ...string) *agentHarness {
	t.Helper()
	s := startServer(t, serverArgs...)
	prom := issueCert(t, s.DataDir, "prometheus", "discovery")
	return &agentHarness{s: s, prom: prom, scraper: s.agentClient(t, prom.KeyPair), sdClient: s.client(t, prom.KeyPair)}
}

func (h *agentHarness) enrollToken(t *testing.T) string {
	t.Helper()
	return createToken(t, h.s.DataDir, "--scope=enroll", "--ttl=10m")
}

// sd reads http_sd as Prometheus does.
func (h *agentHarness) sd(t *testing.T) []httpsdtest.TargetGroup {
	t.Helper()
	groups, _ := getSD(t, h.sdClient, h.s.URL+protocol.PathDiscovery, "")
	return groups
}

func TestAgent_EnrollsHeartbeatsAndDeregisters(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t, "--agent.ttl=8s") // heartbeats every 2s
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t), Labels: map[string]string{"role": "db"}})
	a.waitState(t, h.scraper, "registered")
	id := a.id(t)

	for name, perm := range map[string]os.FileMode{"key.pem": 0o600, "cert.pem": 0, "ca.crt": 0, "agent.json": 0, "web-config.yml": 0} {
		fi, err := os.Stat(filepath.Join(a.StateDir, name))
		if err != nil {
			t.Errorf("state dir: %v", err)
		} else if perm != 0 && fi.Mode().Perm() != perm {
			t.Errorf("%s has mode %o, want %o", name, fi.Mode().Perm(), perm)
		}
	}

	groups := sdTargetsOf(h.sd(t), id)
	if len(groups) != 1 {
		t.Fatalf("http_sd groups of agent %s: %+v, want one (the agent's own metrics)", id, groups)
	}
	g := groups[0]
	if len(g.Targets) != 1 || g.Targets[0] != a.Addr || g.Labels["__metrics_path__"] != protocol.AgentMetricsPath ||
		g.Labels[protocol.MetaExporter] != protocol.AgentExporterName || g.Labels[protocol.MetaHostname] != a.Hostname ||
		g.Labels[protocol.MetaLabelPrefix+"role"] != "db" {
		t.Errorf("http_sd group %+v", g)
	}

	const beats = `baremetal_sd_agent_heartbeats_total{result="success"}`
	waitFor(t, startTimeout, func() error {
		v, err := a.metric(t.Context(), h.scraper, beats)
		if err != nil {
			return err
		}
		if v < 2 {
			return fmt.Errorf("%s = %v, want at least 2", beats, v)
		}
		return nil
	})

	// Only clients with a certificate from the CA may scrape the agent.
	if _, err := doRequest(t.Context(), h.s.client(t), http.MethodGet, a.URL+"/metrics", "", nil); err == nil {
		t.Error("the agent served a client without a certificate")
	}

	a.stop(t)
	if got := sdTargetsOf(h.sd(t), id); len(got) != 0 {
		t.Errorf("http_sd still lists the agent after SIGTERM: %+v", got)
	}
	if !strings.Contains(a.log.String(), "Deregistered") {
		t.Error("the agent did not log its deregistration")
	}
}

// servedSerial returns the serial of the certificate a response was served with.
func servedSerial(resp *http.Response) string {
	return resp.TLS.PeerCertificates[0].SerialNumber.Text(16)
}

func TestAgent_RenewsWithoutFailedScrapes(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t, "--cert.ttl=30s")
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t)})
	a.waitState(t, h.scraper, "registered")

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(h.s.agentCAPEM(t))
	// One scraper opens a connection per scrape, so each sees the
	// certificate served at that moment; the other keeps its connections,
	// as Prometheus does.
	fresh := &http.Client{Timeout: requestTimeout, Transport: &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{h.prom.KeyPair}, MinVersion: tls.VersionTLS12},
		DisableKeepAlives: true,
	}}
	kept := h.scraper

	var (
		mu       sync.Mutex
		serials  = map[string]bool{}
		scrapes  int
		failures []string
	)
	scrape := func(c *http.Client) {
		req, _ := http.NewRequestWithContext(t.Context(), http.MethodGet, a.URL+"/metrics", nil)
		resp, err := c.Do(req)
		var fail string
		if err != nil {
			fail = err.Error()
		} else {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			switch {
			case err != nil:
				fail = err.Error()
			case resp.StatusCode != http.StatusOK:
				fail = resp.Status
			}
		}
		mu.Lock()
		defer mu.Unlock()
		scrapes++
		if fail != "" {
			failures = append(failures, fail)
			return
		}
		if c == fresh {
			serials[servedSerial(resp)] = true
		}
	}
	// A 30s certificate is renewed every 20s: wait for two renewals.
	waitFor(t, 90*time.Second, func() error {
		for range 10 {
			scrape(fresh)
			scrape(kept)
		}
		mu.Lock()
		defer mu.Unlock()
		if len(serials) < 3 {
			return fmt.Errorf("served %d distinct certificates over %d scrapes, want 3", len(serials), scrapes)
		}
		return nil
	})
	mu.Lock()
	defer mu.Unlock()
	if len(failures) > 0 {
		t.Errorf("%d of %d scrapes failed during renewals; first: %s", len(failures), scrapes, failures[0])
	}
	v, err := a.metric(t.Context(), kept, `baremetal_sd_agent_renewals_total{result="success"}`)
	if err != nil || v < 2 {
		t.Errorf("successful renewals = %v (%v), want at least 2", v, err)
	}
}

func TestAgent_SurvivesServerRestart(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t, "--agent.ttl=8s")
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t)})
	a.waitState(t, h.scraper, "registered")
	id := a.id(t)

	h.s.stop(t)
	// The agent keeps serving with its certificate while the server is down.
	a.waitState(t, h.scraper, "unreachable")
	const beats = `baremetal_sd_agent_heartbeats_total{result="success"}`
	before, err := a.metric(t.Context(), h.scraper, beats)
	if err != nil {
		t.Fatal(err)
	}

	h.s.restart(t)
	a.waitState(t, h.scraper, "registered")
	waitFor(t, startTimeout, func() error {
		v, err := a.metric(t.Context(), h.scraper, beats)
		if err != nil {
			return err
		}
		if v <= before {
			return fmt.Errorf("%s = %v, want more than %v", beats, v, before)
		}
		return nil
	})
	if got := sdTargetsOf(h.sd(t), id); len(got) != 1 {
		t.Errorf("http_sd after the restart lists %+v for agent %s, want its group", got, id)
	}
	if got := a.id(t); got != id {
		t.Errorf("agent id changed across the server restart: %s, then %s", id, got)
	}
}

func TestAgent_RevokedKeepsServing(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t, "--agent.ttl=8s")
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t)})
	a.waitState(t, h.scraper, "registered")
	id := a.id(t)

	admin := issueCert(t, h.s.DataDir, "operator", "admin")
	mustRequest(t, h.s.client(t, admin.KeyPair), http.MethodDelete, h.s.URL+protocol.PathAgents+"/"+id, "", nil, http.StatusOK)

	// The agent learns it at its next heartbeat, says so in its metrics and
	// keeps serving (the metric is read from it).
	a.waitState(t, h.scraper, "revoked")
	if got := sdTargetsOf(h.sd(t), id); len(got) != 0 {
		t.Errorf("http_sd lists the revoked agent: %+v", got)
	}
	if !strings.Contains(a.log.String(), "refuses this agent's certificate") {
		t.Error("the agent did not log the revocation")
	}
	// The enrollment token still in the file must not undo the revocation.
	if a.id(t) != id {
		t.Errorf("the revoked agent enrolled again as %s", a.id(t))
	}
	a.stop(t)
}

// startNodeExporter runs the Debian package's node_exporter on a free
// loopback port with a few cheap collectors and returns its address.
func startNodeExporter(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(nodeExporterBinary); err != nil {
		t.Fatalf("%s is missing (%v): run scripts/install-test-deps.sh (make test does)", nodeExporterBinary, err)
	}
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	log := &logBuffer{}
	dumpOnFailure(t, "node_exporter "+addr, log)
	p := startProcess(t, "node_exporter", log, nodeExporterBinary,
		"--web.listen-address="+addr,
		"--collector.disable-defaults",
		"--collector.loadavg",
		"--collector.meminfo",
		"--collector.cpu",
	)
	t.Cleanup(func() {
		if !p.exited() {
			_ = p.terminate(stopTimeout)
		}
	})
	client := &http.Client{Timeout: requestTimeout}
	waitFor(t, startTimeout, func() error {
		if p.exited() {
			t.Fatalf("node_exporter exited while starting: %v", p.err)
		}
		resp, err := doRequest(t.Context(), client, http.MethodGet, "http://"+addr+"/metrics", "", nil)
		if err != nil {
			return err
		}
		if resp.Status != http.StatusOK {
			return fmt.Errorf("node_exporter /metrics: status %d", resp.Status)
		}
		return nil
	})
	return addr
}

func TestAgent_RelaysNodeExporterToPrometheus(t *testing.T) {
	t.Parallel()
	for _, rel := range prometheusReleases() {
		t.Run(rel.Name, func(t *testing.T) {
			t.Parallel()
			testRelaysNodeExporterToPrometheus(t, rel)
		})
	}
}

func testRelaysNodeExporterToPrometheus(t *testing.T, rel prometheusRelease) {
	ctx := t.Context()
	h := newAgentHarness(t)
	node := startNodeExporter(t)
	const hostname = "e2e-node-host"
	a := startAgent(t, h.s, agentOptions{
		Hostname: hostname,
		Token:    h.enrollToken(t),
		Labels:   map[string]string{"role": "db"},
		RelayConfig: fmt.Sprintf(`exporters:
  - name: node
    url: http://%s/metrics
`, node),
	})
	a.waitState(t, h.scraper, "registered")
	id := a.id(t)

	prom := startPrometheusBinary(t, rel.Binary, fmt.Sprintf(`
global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: baremetal
    tls_config:
      ca_file: %[5]s
      cert_file: %[2]s
      key_file: %[3]s
    http_sd_configs:
      - url: %[4]s
        refresh_interval: 1s
        tls_config:
          ca_file: %[1]s
          cert_file: %[2]s
          key_file: %[3]s
    relabel_configs:
      - source_labels: [__meta_baremetal_sd_exporter]
        target_label: exporter
      - source_labels: [__meta_baremetal_sd_hostname]
        target_label: hostname
      - source_labels: [__meta_baremetal_sd_label_role]
        target_label: role
`, h.prom.CAFile, h.prom.CertFile, h.prom.KeyFile, h.s.URL+protocol.PathDiscovery, h.prom.AgentCAFile))

	expect := func(expr string, check func([]promSample) error) {
		t.Helper()
		waitFor(t, 90*time.Second, func() error {
			samples, err := prom.query(ctx, expr)
			if err != nil {
				return err
			}
			if err := check(samples); err != nil {
				return fmt.Errorf("%s: %w (samples: %v)", expr, err, samples)
			}
			return nil
		})
	}
	upIsOne := func(samples []promSample) error {
		if len(samples) != 1 || samples[0].Value != "1" {
			return fmt.Errorf("want one sample with value 1")
		}
		m := samples[0].Metric
		if m["hostname"] != hostname || m["role"] != "db" {
			return fmt.Errorf("labels %v lack hostname=%s role=db", m, hostname)
		}
		return nil
	}
	expect(`up{exporter="node"}`, upIsOne)
	expect(`up{exporter="agent"}`, upIsOne)
	// node_exporter's series come through the relay with the meta labels
	// turned into target labels, and with exactly those labels: the
	// per-exporter endpoint must not add an exporter label of its own,
	// which Prometheus would keep as exported_exporter next to the target
	// label. The selector names only the metric and the host, so that a
	// renamed or missing label shows up as a wrong label set, not as no
	// result.
	expect(`node_load1{hostname="`+hostname+`"}`, func(s []promSample) error {
		if len(s) != 1 {
			return fmt.Errorf("want one node_load1 series")
		}
		want := map[string]string{
			"__name__": "node_load1",
			"exporter": "node",
			"hostname": hostname,
			"instance": a.Addr,
			"job":      "baremetal",
			"role":     "db",
		}
		if got := s[0].Metric; !maps.Equal(got, want) {
			return fmt.Errorf("labels %v, want exactly %v (no exported_exporter)", got, want)
		}
		return nil
	})
	expect(`count(node_cpu_seconds_total{exporter="node", role="db"})`, func(s []promSample) error {
		if len(s) != 1 || s[0].Value == "0" {
			return fmt.Errorf("want node_cpu_seconds_total series")
		}
		return nil
	})

	// Stopping the agent deregisters it: Prometheus drops its targets.
	a.stop(t)
	waitFor(t, 60*time.Second, func() error {
		ts, err := prom.targets(ctx)
		if err != nil {
			return err
		}
		for _, tg := range ts.Active {
			if tg.DiscoveredLabels[protocol.MetaAgentID] == id {
				return fmt.Errorf("Prometheus still scrapes %s after the agent stopped", tg.ScrapeURL)
			}
		}
		return nil
	})
}

func TestAgent_ComesBackAfterCertificateExpired(t *testing.T) {
	t.Parallel()
	h := newAgentHarness(t, "--cert.ttl=5s", "--agent.ttl=8s")
	a := startAgent(t, h.s, agentOptions{Token: h.enrollToken(t), Args: []string{"--no-agent.deregister-on-shutdown"}})
	a.waitState(t, h.scraper, "registered")
	id := a.id(t)
	a.stop(t)

	// The host is off for longer than its certificate lives, and the token
	// it enrolled with is gone.
	if err := os.Remove(a.TokenFile); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(a.StateDir, "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("cert.pem holds no PEM block")
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, func() error {
		if left := time.Until(leaf.NotAfter); left >= 0 {
			return fmt.Errorf("certificate valid for %s more", left)
		}
		return nil
	})

	a.start(t)
	a.waitState(t, h.scraper, "registered")
	if got := a.id(t); got != id {
		t.Errorf("agent id after coming back = %s, want %s", got, id)
	}
	if !strings.Contains(a.log.String(), "Renewed the expired certificate") {
		t.Error("the agent did not come back through the expired-certificate path")
	}
	a.stop(t)
}
