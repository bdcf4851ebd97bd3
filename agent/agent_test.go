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
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	toolkitweb "github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/crypto/bcrypt"

	certauth "github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/internal/freeport"
	"github.com/baremetal-sd/baremetal_sd/internal/heldexporter"
	"github.com/baremetal-sd/baremetal_sd/internal/syncbuf"
)

// harness runs the agent against a fake discovery server and scrapes it like
// Prometheus does, with a client certificate from the CA.
type harness struct {
	t         *testing.T
	ca        *testCA
	fake      *fakeServer
	dir       string
	tokenFile string
	caFile    string
	addr      string
	port      int
	logs      *syncbuf.Buffer
	scraper   *http.Client
	runs      []*running
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	ca := newTestCA(t)
	h := &harness{
		t:    t,
		ca:   ca,
		fake: newFakeServer(t, ca),
		dir:  filepath.Join(t.TempDir(), "state"),
		logs: &syncbuf.Buffer{},
	}
	tmp := t.TempDir()
	h.tokenFile = filepath.Join(tmp, "token")
	h.caFile = filepath.Join(tmp, "ca.crt")
	if err := os.WriteFile(h.caFile, ca.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	h.port = freePort(t)
	h.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(h.port))
	h.scraper = &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{
				RootCAs:      ca.pool,
				Certificates: []tls.Certificate{ca.tlsCert(t, "prometheus", certauth.RoleDiscovery)},
			},
			// Every scrape makes a new handshake, so each one sees the
			// certificate the listener serves at that moment.
			DisableKeepAlives: true,
		},
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent logs:\n%s\nserver calls: %s", h.logs, h.fake.callLog())
		}
	})
	return h
}

func freePort(t *testing.T) int {
	t.Helper()
	return freeport.Port(t)
}

func (h *harness) config() Config {
	listen := []string{h.addr}
	systemd := false
	webConfig := ""
	return Config{
		DiscoveryURLs:        []string{h.fake.srv.URL},
		TokenFile:            h.tokenFile,
		CAFile:               h.caFile,
		StateDir:             h.dir,
		Web:                  &toolkitweb.FlagConfig{WebListenAddresses: &listen, WebSystemdSocket: &systemd, WebConfigFile: &webConfig},
		Hostname:             "host1",
		DeregisterOnShutdown: true,
		Logger:               slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		BackoffBase:          10 * time.Millisecond,
		BackoffMax:           200 * time.Millisecond,
		RequestTimeout:       5 * time.Second,
		ShutdownTimeout:      5 * time.Second,
	}
}

// writeToken puts a token into the token file, registering it with the fake
// server when valid.
func (h *harness) writeToken(tok string, valid bool) {
	h.t.Helper()
	if valid {
		h.fake.addToken(tok)
	}
	if err := os.WriteFile(h.tokenFile, []byte(tok+"\n"), 0o600); err != nil {
		h.t.Fatal(err)
	}
}

// running is an agent started by a test.
type running struct {
	cancel  context.CancelFunc
	done    chan error
	mu      sync.Mutex
	stopped bool
	exited  bool
	err     error
}

func (h *harness) start(cfg Config) *running {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- Run(ctx, cfg) }()
	h.runs = append(h.runs, r)
	h.t.Cleanup(func() { _ = r.stop() })
	return r
}

// poll reports whether Run returned, and what.
func (r *running) poll() (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.exited {
		select {
		case r.err = <-r.done:
			r.exited = true
		default:
		}
	}
	return r.exited, r.err
}

// stop cancels the agent's context and returns what Run returned.
func (r *running) stop() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.stopped {
		r.stopped = true
		r.cancel()
		if !r.exited {
			select {
			case r.err = <-r.done:
			case <-time.After(30 * time.Second):
				r.err = errors.New("Run did not return within 30s of cancellation")
			}
			r.exited = true
		}
	}
	return r.err
}

// waitFor polls cond until it holds or the deadline passes, failing at once
// when an agent that was not stopped returned.
func (h *harness) waitFor(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		for _, r := range h.runs {
			r.mu.Lock()
			stopped := r.stopped
			r.mu.Unlock()
			if exited, err := r.poll(); exited && !stopped {
				h.t.Fatalf("waiting for %s: Run returned %v", what, err)
			}
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// get fetches a path from the agent over mTLS.
func (h *harness) get(path string) (*http.Response, string, error) {
	resp, err := h.scraper.Get("https://" + h.addr + path)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, string(body), err
}

// metric returns the value of one series of the agent's /metrics, or -1.
func (h *harness) metric(series string) float64 {
	resp, body, err := h.get("/metrics")
	if err != nil || resp.StatusCode != http.StatusOK {
		return -1
	}
	return seriesValue(body, series)
}

func seriesValue(body, series string) float64 {
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return -1
			}
			return f
		}
	}
	return -1
}

func stateSeries(state string) string {
	return `baremetal_sd_agent_registration_state{state="` + state + `"}`
}

// enrolled starts an agent with a valid token and waits until it serves.
func (h *harness) enrolled(cfg Config) (*running, string) {
	h.t.Helper()
	h.writeToken("good-token", true)
	r := h.start(cfg)
	h.waitFor("the agent to enroll and serve", func() bool {
		return h.metric(stateSeries("registered")) == 1
	})
	ids := h.fake.agentIDs()
	if len(ids) != 1 {
		h.t.Fatalf("registered agents = %v, want one", ids)
	}
	return r, ids[0]
}

func TestBackoff_Bounds(t *testing.T) {
	tests := []struct {
		n         int
		base, max time.Duration
		ceiling   time.Duration
	}{
		{0, time.Second, time.Minute, time.Second},
		{1, time.Second, time.Minute, time.Second},
		{2, time.Second, time.Minute, 2 * time.Second},
		{5, time.Second, time.Minute, 16 * time.Second},
		{7, time.Second, time.Minute, time.Minute},
		{1000, time.Second, 5 * time.Minute, 5 * time.Minute},
		{3, time.Hour, time.Minute, time.Minute},
		{64, time.Duration(1) << 40, time.Duration(1) << 62, time.Duration(1) << 62},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("n=%d", tt.n), func(t *testing.T) {
			var maxSeen time.Duration
			for range 2000 {
				d := backoff(tt.n, tt.base, tt.max)
				if d < 0 || d >= tt.ceiling {
					t.Fatalf("backoff(%d, %v, %v) = %v, want in [0, %v)", tt.n, tt.base, tt.max, d, tt.ceiling)
				}
				maxSeen = max(maxSeen, d)
			}
			// Full jitter uses the whole range, not just its top.
			if maxSeen < tt.ceiling/2 {
				t.Errorf("largest of 2000 waits is %v, want some above %v", maxSeen, tt.ceiling/2)
			}
		})
	}
	if d := backoff(3, time.Second, 0); d != 0 {
		t.Errorf("backoff with max 0 = %v, want 0", d)
	}
}

func TestJitter_Bounds(t *testing.T) {
	for _, interval := range []time.Duration{time.Second, time.Minute, 5 * time.Minute} {
		for range 1000 {
			d := jitter(interval)
			if d > interval || d < interval*8/10 {
				t.Fatalf("jitter(%v) = %v, want within [0.8, 1.0] of it", interval, d)
			}
		}
	}
}

func TestLoadOrCreateKey_CreatesOnceAndKeeps(t *testing.T) {
	path := filepath.Join(t.TempDir(), KeyFile)
	k1, created, err := loadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("first load: created=%v err=%v", created, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("key mode = %v, want 0600", fi.Mode().Perm())
	}
	k2, created, err := loadOrCreateKey(path)
	if err != nil || created {
		t.Fatalf("second load: created=%v err=%v", created, err)
	}
	if !k1.Equal(k2) {
		t.Error("second load returned another key")
	}
	if err := os.WriteFile(path, []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := loadOrCreateKey(path); err == nil || !strings.Contains(err.Error(), "new enrollment token") {
		t.Errorf("garbage key: err = %v, want a clear error", err)
	}
}

// TestLoadOrCreateKey_RefusesLoosePermissions: a key its group or others
// may read could be copied already; the agent refuses to use it and says
// what to do, instead of fixing the mode behind the operator's back.
func TestLoadOrCreateKey_RefusesLoosePermissions(t *testing.T) {
	tests := []struct {
		mode os.FileMode
		ok   bool
	}{
		{0o600, true},
		{0o400, true},
		{0o644, false},
		{0o640, false},
		{0o604, false},
		{0o660, false},
		{0o620, false},
		{0o610, false},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%04o", tt.mode), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), KeyFile)
			want, _, err := loadOrCreateKey(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tt.mode); err != nil {
				t.Fatal(err)
			}
			before, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			got, created, err := loadOrCreateKey(path)
			if tt.ok {
				if err != nil || created || !got.Equal(want) {
					t.Fatalf("load: created=%v err=%v, want the same key", created, err)
				}
				return
			}
			if !errors.Is(err, errKeyPermissions) {
				t.Fatalf("load: err = %v, want errKeyPermissions", err)
			}
			for _, s := range []string{path, fmt.Sprintf("%04o", tt.mode), "chmod 600", "new enrollment token"} {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			// Neither replaced nor "fixed": the operator decides.
			after, _ := os.ReadFile(path)
			fi, _ := os.Stat(path)
			if string(after) != string(before) || fi.Mode().Perm() != tt.mode {
				t.Errorf("the refused key was changed (mode now %04o)", fi.Mode().Perm())
			}
		})
	}
}

// TestRun_RefusesLooseKey: the refusal stops the agent at start, before it
// talks to the server or serves anything.
func TestRun_RefusesLooseKey(t *testing.T) {
	h := newHarness(t)
	if err := os.MkdirAll(h.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(h.dir, KeyFile)
	if _, _, err := loadOrCreateKey(key); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(key, 0o644); err != nil {
		t.Fatal(err)
	}
	h.writeToken("good-token", true)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Run(ctx, h.config()); !errors.Is(err, errKeyPermissions) {
		t.Fatalf("Run = %v, want errKeyPermissions", err)
	}
	if calls := h.fake.callLog(); calls != "" {
		t.Errorf("the agent called the server with a refused key: %s", calls)
	}
}

func TestRegistrationDigest_ChangesWithContent(t *testing.T) {
	base := protocol.RegisterRequest{Hostname: "h", Port: 1, Labels: map[string]string{"a": "1", "b": "2"}}
	same := protocol.RegisterRequest{Hostname: "h", Port: 1, Labels: map[string]string{"b": "2", "a": "1"}, CSR: "ignored"}
	if registrationDigest(&base) != registrationDigest(&same) {
		t.Error("digest depends on map order or the CSR")
	}
	changes := []protocol.RegisterRequest{
		{Hostname: "h2", Port: 1, Labels: base.Labels},
		{Hostname: "h", Port: 2, Labels: base.Labels},
		{Hostname: "h", Port: 1, Address: "10.0.0.1", Labels: base.Labels},
		{Hostname: "h", Port: 1, Labels: map[string]string{"a": "1"}},
		{Hostname: "h", Port: 1, Labels: base.Labels, Exporters: []protocol.Exporter{{Name: "node", Path: "/x"}}},
	}
	for i, c := range changes {
		if registrationDigest(&c) == registrationDigest(&base) {
			t.Errorf("change %d does not change the digest", i)
		}
	}
}

func TestConfig_Normalize(t *testing.T) {
	valid := func() Config {
		listen := []string{":9956"}
		wc := ""
		return Config{DiscoveryURLs: []string{"https://sd:9955"}, StateDir: "s", Hostname: "h1",
			Web: &toolkitweb.FlagConfig{WebListenAddresses: &listen, WebConfigFile: &wc}}
	}
	tests := []struct {
		name   string
		modify func(*Config)
		want   string
	}{
		{"valid", func(*Config) {}, ""},
		{"no url", func(c *Config) { c.DiscoveryURLs = nil }, "--discovery.url"},
		{"no state dir", func(c *Config) { c.StateDir = "" }, "--agent.state-dir"},
		{"bad hostname", func(c *Config) { c.Hostname = "under_score" }, "--agent.hostname"},
		{"bad address", func(c *Config) { c.Address = "0.0.0.0" }, "--agent.address"},
		{"bad label", func(c *Config) { c.Labels = map[string]string{"__x": "1"} }, "--agent.label"},
		{"no port", func(c *Config) { l := []string{"localhost"}; c.Web.WebListenAddresses = &l }, "--web.listen-address"},
		{"explicit port", func(c *Config) { l := []string{"localhost"}; c.Web.WebListenAddresses = &l; c.Port = 443 }, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := valid()
			tt.modify(&c)
			got, err := c.normalize()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("normalize: %v", err)
				}
				if got.Port == 0 || got.BackoffBase != DefaultBackoffBase || got.BackoffMax != DefaultBackoffMax {
					t.Errorf("defaults not filled: %+v", got)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("normalize error = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

func TestRun_EnrollsAndServes(t *testing.T) {
	h := newHarness(t)
	cfg := h.config()
	cfg.Labels = map[string]string{"role": "db"}
	h.enrolled(cfg)

	a, _ := h.fake.agent(h.fake.agentIDs()[0])
	if a.req.Hostname != "host1" || a.req.Port != h.port || a.req.Labels["role"] != "db" || a.req.Address != "" {
		t.Errorf("registered %+v", a.req)
	}
	for name, mode := range map[string]os.FileMode{KeyFile: 0o600, CertFile: 0, CAFile: 0, StateFile: 0o600, WebConfigFile: 0o600} {
		fi, err := os.Stat(filepath.Join(h.dir, name))
		if err != nil {
			t.Errorf("state dir: %v", err)
			continue
		}
		if mode != 0 && fi.Mode().Perm() != mode {
			t.Errorf("%s mode = %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	if v := h.metric("baremetal_sd_agent_certificate_expiry_timestamp_seconds"); v < float64(time.Now().Unix()) {
		t.Errorf("certificate expiry metric = %v, want in the future", v)
	}
	if v := h.metric(`baremetal_sd_agent_registrations_total{result="success"}`); v != 1 {
		t.Errorf("successful registrations = %v, want 1", v)
	}
	resp, body, err := h.get("/")
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(body, protocol.AgentMetricsPath) {
		t.Errorf("landing page: %v, %v, %.200q", resp, err, body)
	}

	// Only clients with a certificate from the CA may scrape.
	anon := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: h.ca.pool}}}
	if resp, err := anon.Get("https://" + h.addr + "/metrics"); err == nil {
		resp.Body.Close()
		t.Errorf("scrape without a client certificate got %s, want a TLS failure", resp.Status)
	}
}

// TestRun_OnlyScrapersMayScrape: every enrolled host holds a certificate
// from the fleet's CA, so the CA alone must not let one host read another's
// exporters: only discovery (Prometheus) and admin certificates may.
func TestRun_OnlyScrapersMayScrape(t *testing.T) {
	h := newHarness(t)
	h.enrolled(h.config())
	tests := []struct {
		role   certauth.Role
		status int
	}{
		{certauth.RoleAgent, http.StatusForbidden},
		{certauth.RoleServer, http.StatusForbidden},
		{certauth.RoleAdmin, http.StatusOK},
		{certauth.RoleDiscovery, http.StatusOK},
	}
	for _, tt := range tests {
		t.Run(string(tt.role), func(t *testing.T) {
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
				TLSClientConfig: &tls.Config{
					RootCAs:      h.ca.pool,
					Certificates: []tls.Certificate{h.ca.tlsCert(t, "client", tt.role)},
				},
			}}
			defer c.CloseIdleConnections()
			resp, err := c.Get("https://" + h.addr + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("%s certificate: %s, want %d", tt.role, resp.Status, tt.status)
			}
		})
	}
	if v := h.metric(`baremetal_sd_agent_refused_requests_total{role="agent"}`); v != 1 {
		t.Errorf("refused requests of role agent = %v, want 1", v)
	}
}

func TestRun_WaitsForToken(t *testing.T) {
	h := newHarness(t)
	h.start(h.config())
	h.waitFor("the agent to ask for a token", func() bool {
		return strings.Contains(h.logs.String(), "A new enrollment token is needed")
	})
	// Without a certificate nothing is served.
	if _, _, err := h.get("/metrics"); err == nil {
		t.Error("the agent serves without a certificate")
	}
	h.writeToken("late-token", true)
	h.waitFor("the agent to enroll", func() bool { return h.metric(stateSeries("registered")) == 1 })
	if n := strings.Count(h.logs.String(), "A new enrollment token is needed"); n != 1 {
		t.Errorf("the missing token was logged %d times, want once", n)
	}
}

func TestRun_RefusedTokenIsNotResent(t *testing.T) {
	h := newHarness(t)
	h.writeToken("wrong-token", false)
	h.start(h.config())
	h.waitFor("the token to be refused", func() bool {
		return strings.Contains(h.logs.String(), "token refused: unknown token")
	})
	h.writeToken("good-token", true)
	h.waitFor("the agent to enroll", func() bool { return h.metric(stateSeries("registered")) == 1 })
	// The refused token was sent once, however many backoff rounds passed.
	if n := h.fake.count("register:token"); n != 2 {
		t.Errorf("token registrations = %d, want 2 (one refused, one accepted)", n)
	}
}

func TestRun_ReusesStateDir(t *testing.T) {
	h := newHarness(t)
	cfg := h.config()
	cfg.DeregisterOnShutdown = false
	r, id := h.enrolled(cfg)
	if err := r.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	key, _ := os.ReadFile(filepath.Join(h.dir, KeyFile))
	cert, _ := os.ReadFile(filepath.Join(h.dir, CertFile))
	if err := os.Remove(h.tokenFile); err != nil {
		t.Fatal(err)
	}
	beats := h.fake.count("heartbeat")

	h.start(cfg)
	h.waitFor("a heartbeat after the restart", func() bool { return h.fake.count("heartbeat") > beats })
	h.waitFor("the agent to serve again", func() bool { return h.metric(stateSeries("registered")) == 1 })
	if n := h.fake.count("register:token") + h.fake.count("register:mtls"); n != 1 {
		t.Errorf("registrations = %d, want only the first enrollment", n)
	}
	key2, _ := os.ReadFile(filepath.Join(h.dir, KeyFile))
	cert2, _ := os.ReadFile(filepath.Join(h.dir, CertFile))
	if string(key) != string(key2) || string(cert) != string(cert2) {
		t.Error("restart replaced the key or the certificate")
	}
	if ids := h.fake.agentIDs(); len(ids) != 1 || ids[0] != id {
		t.Errorf("agents = %v, want [%s]", ids, id)
	}
}

func TestRun_ReregistersWhenConfigChanges(t *testing.T) {
	h := newHarness(t)
	cfg := h.config()
	cfg.DeregisterOnShutdown = false
	r, id := h.enrolled(cfg)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	cfg.Labels = map[string]string{"rack": "r2"}
	h.start(cfg)
	h.waitFor("re-registration with the new labels", func() bool {
		a, _ := h.fake.agent(id)
		return a.req.Labels["rack"] == "r2"
	})
	if n := h.fake.count("register:mtls"); n != 1 {
		t.Errorf("mTLS registrations = %d, want 1", n)
	}
}

func TestRun_RegistersAgainWhenForgotten(t *testing.T) {
	h := newHarness(t)
	_, id := h.enrolled(h.config())
	h.fake.forget(id)
	h.waitFor("re-registration over mTLS", func() bool {
		_, ok := h.fake.agent(id)
		return ok && h.fake.count("register:mtls") == 1
	})
	h.waitFor("heartbeats to succeed again", func() bool { return h.metric(stateSeries("registered")) == 1 })
	if v := h.metric(`baremetal_sd_agent_heartbeats_total{result="not_found"}`); v < 1 {
		t.Errorf("not_found heartbeats = %v, want at least 1", v)
	}
}

func TestRun_RevokedKeepsServing(t *testing.T) {
	h := newHarness(t)
	_, id := h.enrolled(h.config())
	h.fake.revoke(id)
	// The state metric is set just before the state is logged: wait for
	// both, or the log check races the lifecycle goroutine.
	h.waitFor("the revoked state in the agent's metrics and its log", func() bool {
		return h.metric(stateSeries("revoked")) == 1 &&
			strings.Contains(h.logs.String(), "refuses this agent's certificate")
	})
	// A new token re-admits the agent.
	h.writeToken("readmit-token", true)
	h.waitFor("re-admission with the new token", func() bool {
		return h.metric(stateSeries("registered")) == 1
	})
}

func TestRun_ServerDownKeepsServing(t *testing.T) {
	h := newHarness(t)
	h.enrolled(h.config())
	h.fake.down.Store(true)
	h.waitFor("the unreachable state", func() bool { return h.metric(stateSeries("unreachable")) == 1 })
	before := h.metric("baremetal_sd_agent_last_heartbeat_success_timestamp_seconds")
	h.fake.down.Store(false)
	h.waitFor("heartbeats to resume", func() bool {
		return h.metric(stateSeries("registered")) == 1 &&
			h.metric("baremetal_sd_agent_last_heartbeat_success_timestamp_seconds") > before
	})
	if n := strings.Count(h.logs.String(), "Discovery server unreachable"); n != 1 {
		t.Errorf("the outage was logged %d times, want once", n)
	}
}

func TestRun_RenewsWithoutFailedScrape(t *testing.T) {
	h := newHarness(t)
	h.fake.certTTL.Store(int64(3 * time.Second))
	h.enrolled(h.config())

	serials := map[string]bool{}
	var failures []error
	deadline := time.Now().Add(30 * time.Second)
	for len(serials) < 3 && time.Now().Before(deadline) {
		resp, _, err := h.get("/metrics")
		switch {
		case err != nil:
			failures = append(failures, err)
		case resp.StatusCode != http.StatusOK:
			failures = append(failures, fmt.Errorf("status %s", resp.Status))
		default:
			serials[resp.TLS.PeerCertificates[0].SerialNumber.String()] = true
		}
	}
	if len(serials) < 3 {
		t.Fatalf("served %d certificates, want 3 (two renewals)", len(serials))
	}
	if len(failures) > 0 {
		t.Fatalf("%d scrapes failed during renewals, first: %v", len(failures), failures[0])
	}
	if n := h.fake.count("renew:mtls"); n < 2 {
		t.Errorf("renewals = %d, want at least 2", n)
	}
}

// expiredState leaves behind what a host that was off for two hours has: a
// key and a certificate that expired an hour ago.
func (h *harness) expiredState(cfg Config, withState bool) string {
	h.t.Helper()
	if err := os.MkdirAll(h.dir, 0o700); err != nil {
		h.t.Fatal(err)
	}
	key, _, err := loadOrCreateKey(filepath.Join(h.dir, KeyFile))
	if err != nil {
		h.t.Fatal(err)
	}
	const id = "agent-old"
	leaf, chain := h.ca.sign(h.t, id, &key.PublicKey, time.Now().Add(-3*time.Hour), time.Now().Add(-time.Hour))
	if err := os.WriteFile(filepath.Join(h.dir, CertFile), chain, 0o644); err != nil {
		h.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(h.dir, CAFile), h.ca.pem, 0o644); err != nil {
		h.t.Fatal(err)
	}
	h.fake.mu.Lock()
	h.fake.agents[id] = &fakeAgent{serial: leaf.SerialNumber.Text(16)}
	h.fake.mu.Unlock()
	if withState {
		n, err := cfg.normalize()
		if err != nil {
			h.t.Fatal(err)
		}
		digest := registrationDigest(&protocol.RegisterRequest{Hostname: n.Hostname, Port: n.Port})
		if err := savePersisted(filepath.Join(h.dir, StateFile), persistedState{
			AgentID: id, Registration: digest, CertSerial: leaf.SerialNumber.Text(16),
		}); err != nil {
			h.t.Fatal(err)
		}
	}
	return id
}

func TestRun_ExpiredCertificate(t *testing.T) {
	tests := []struct {
		name      string
		withState bool
		forget    bool
		refuse    bool
		wantCalls []string
	}{
		{"renews with the expired certificate", true, false, false, []string{"renew:expired"}},
		{"registers with it when the registry lost the agent", true, true, false, []string{"renew:expired", "register:expired"}},
		{"registers with it when the agent state is gone", false, false, false, []string{"register:expired"}},
		{"needs a token past the grace window", true, false, true, []string{"renew:expired", "register:token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newHarness(t)
			cfg := h.config()
			id := h.expiredState(cfg, tt.withState)
			if tt.forget {
				h.fake.forget(id)
			}
			h.fake.refuseExpired.Store(tt.refuse)
			h.start(cfg)
			if tt.refuse {
				h.waitFor("the agent to ask for a token", func() bool {
					return strings.Contains(h.logs.String(), "A new enrollment token is needed")
				})
				h.writeToken("fresh-token", true)
			}
			h.waitFor("a valid certificate", func() bool {
				c, _, err := loadCertificate(filepath.Join(h.dir, CertFile), mustKey(t, h.dir))
				return err == nil && c != nil && time.Now().Before(c.Leaf.NotAfter)
			})
			for _, call := range tt.wantCalls {
				if h.fake.count(call) != 1 {
					t.Errorf("calls %q, want one %s", h.fake.callLog(), call)
				}
			}
		})
	}
}

// TestRun_ExpiredCertificateWhileServerClockBehind: when the agent's clock
// is ahead of the server's, the server may still call a certificate the
// agent found expired valid (400). That settles itself within the clock
// skew: the agent retries with the certificate rather than giving up on it
// and waiting for a token forever.
func TestRun_ExpiredCertificateWhileServerClockBehind(t *testing.T) {
	h := newHarness(t)
	cfg := h.config()
	h.expiredState(cfg, true)
	h.fake.stillValid.Store(2)
	h.start(cfg) // no token
	h.waitFor("a valid certificate", func() bool {
		c, _, err := loadCertificate(filepath.Join(h.dir, CertFile), mustKey(t, h.dir))
		return err == nil && c != nil && time.Now().Before(c.Leaf.NotAfter)
	})
	if n := h.fake.count("renew:expired"); n != 3 {
		t.Errorf("renewals with the expired certificate = %d, want 3 (two answered 400, then renewed)", n)
	}
	if strings.Contains(h.logs.String(), "A new enrollment token is needed") {
		t.Error("the agent asked for a token although the server only had not reached the expiry yet")
	}
}

// TestRun_CertificateExpiresDuringHeldRenewal: found by the chaos harness
// (e2e/chaos_test.go). A renewal held up by a stalled network reaches the
// server after the certificate expired, and the server refuses it for want
// of a valid certificate (401). That is no revocation: the agent renews
// with the expired certificate next, without reporting itself revoked or
// asking an operator for a token.
func TestRun_CertificateExpiresDuringHeldRenewal(t *testing.T) {
	h := newHarness(t)
	h.fake.certTTL.Store(int64(3 * time.Second))
	h.fake.heldRenewals.Store(1)
	h.enrolled(h.config())
	h.waitFor("a renewal with the expired certificate", func() bool {
		return h.fake.count("renew:expired") >= 1 && h.metric(stateSeries("registered")) == 1
	})
	if n := h.fake.count("renew:held"); n != 1 {
		t.Errorf("held renewals = %d, want 1 (calls %q)", n, h.fake.callLog())
	}
	if strings.Contains(h.logs.String(), "refuses this agent's certificate") {
		t.Errorf("the agent took the late renewal's 401 for a revocation:\n%s", h.logs.String())
	}
}

func mustKey(t *testing.T, dir string) *ecdsa.PrivateKey {
	t.Helper()
	k, _, err := loadOrCreateKey(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRun_FailsOverBetweenURLs(t *testing.T) {
	h := newHarness(t)
	cfg := h.config()
	dead := "https://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(freePort(t)))
	cfg.DiscoveryURLs = []string{dead, h.fake.srv.URL}
	h.enrolled(cfg)
	beats := h.fake.count("heartbeat")
	h.waitFor("heartbeats through the second server", func() bool { return h.fake.count("heartbeat") > beats+1 })
}

func TestRun_DeregistersOnShutdown(t *testing.T) {
	h := newHarness(t)
	r, _ := h.enrolled(h.config())
	if err := r.stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
	if n := h.fake.count("deregister"); n != 1 {
		t.Errorf("deregistrations = %d, want 1", n)
	}
	if ids := h.fake.agentIDs(); len(ids) != 0 {
		t.Errorf("agents after shutdown = %v, want none", ids)
	}
	if _, _, err := h.get("/metrics"); err == nil {
		t.Error("the agent still serves after Run returned")
	}
}

type scrapeResult struct {
	status int
	body   string
	err    error
}

// scrapeAsync scrapes path in the background.
func (h *harness) scrapeAsync(path string) <-chan scrapeResult {
	ch := make(chan scrapeResult, 1)
	go func() {
		resp, body, err := h.get(path)
		res := scrapeResult{body: body, err: err}
		if resp != nil {
			res.status = resp.StatusCode
		}
		ch <- res
	}()
	return ch
}

func waitScrape(t *testing.T, ch <-chan scrapeResult) scrapeResult {
	t.Helper()
	select {
	case res := <-ch:
		return res
	case <-time.After(15 * time.Second):
		t.Fatal("the scrape did not finish")
		return scrapeResult{}
	}
}

// TestRun_FinishesInFlightScrapesOnShutdown: on the end of its context the
// agent stops accepting connections at once, but a scrape already in flight
// completes, and Run returns only after it.
func TestRun_FinishesInFlightScrapesOnShutdown(t *testing.T) {
	up := heldexporter.Start(t)
	h := newHarness(t)
	cfg := h.config()
	cfg.RelayConfigFile = writeRelayConfig(t, "slow", up.URL)
	r, id := h.enrolled(cfg)

	scrape := h.scrapeAsync("/exporters/slow/metrics")
	up.WaitArrived(t, 10*time.Second)
	r.cancel()
	h.waitFor("the listener to refuse new connections", func() bool {
		c, err := net.DialTimeout("tcp", h.addr, time.Second)
		if err != nil {
			return true
		}
		c.Close()
		return false
	})
	if exited, err := r.poll(); exited {
		t.Fatalf("Run returned (%v) while a scrape was in flight", err)
	}
	h.waitFor("the deregistration", func() bool { return h.fake.count("deregister") == 1 })

	up.Release()
	res := waitScrape(t, scrape)
	if res.err != nil || res.status != http.StatusOK || !strings.Contains(res.body, "\nheld_exporter_value") {
		t.Fatalf("in-flight scrape: status %d, err %v, body %q; want 200 with the exporter's metrics", res.status, res.err, res.body)
	}
	if err := r.stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if _, ok := h.fake.agent(id); ok {
		t.Error("the agent is still registered after shutdown")
	}
}

// TestRun_DeregistersWhileScrapesDrain: a scrape that outlasts the shutdown
// timeout must not cost the deregistration, or the host stays in http_sd,
// failing, until its TTL runs out.
func TestRun_DeregistersWhileScrapesDrain(t *testing.T) {
	up := heldexporter.Start(t)
	h := newHarness(t)
	cfg := h.config()
	cfg.RelayConfigFile = writeRelayConfig(t, "slow", up.URL)
	cfg.ShutdownTimeout = time.Second
	r, id := h.enrolled(cfg)

	scrape := h.scrapeAsync("/exporters/slow/metrics")
	up.WaitArrived(t, 10*time.Second)
	if err := r.stop(); err != nil { // returns once the shutdown timeout has passed
		t.Fatalf("Run = %v, want nil", err)
	}
	if n := h.fake.count("deregister"); n != 1 {
		t.Errorf("deregistrations = %d, want 1", n)
	}
	if _, ok := h.fake.agent(id); ok {
		t.Error("the agent is still registered after shutdown")
	}
	up.Release()
	waitScrape(t, scrape)
}

// writeKeyPair writes c's certificate and key as PEM files into dir.
func writeKeyPair(t *testing.T, dir, name string, c tls.Certificate) (certFile, keyFile string) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// mtlsClient trusts roots and presents certs.
func mtlsClient(t *testing.T, roots *x509.CertPool, certs ...tls.Certificate) *http.Client {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{RootCAs: roots, Certificates: certs},
		DisableKeepAlives: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Timeout: 5 * time.Second, Transport: tr}
}

// TestRun_OperatorWebConfig: with --web.config.file the agent serves what
// the operator's file says, here a certificate and client CA of the
// operator's own PKI, and it does so at once, before it has enrolled.
func TestRun_OperatorWebConfig(t *testing.T) {
	h := newHarness(t)
	operator := newTestCA(t) // not the fleet's CA
	dir := t.TempDir()
	certFile, keyFile := writeKeyPair(t, dir, "serving", operator.tlsCert(t, "agent.operator.example", certauth.RoleServer))
	clientCA := filepath.Join(dir, "clients.crt")
	if err := os.WriteFile(clientCA, operator.pem, 0o644); err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(dir, "web.yml")
	if err := os.WriteFile(webConfig, []byte(fmt.Sprintf(`tls_server_config:
  cert_file: %s
  key_file: %s
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: %s
`, certFile, keyFile, clientCA)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := h.config()
	cfg.Web.WebConfigFile = &webConfig
	h.start(cfg) // no token: the agent cannot enroll

	// The operator's own client certificate scrapes; its role is the
	// operator's business, not the agent's.
	operatorClient := mtlsClient(t, operator.pool, operator.tlsCert(t, "prometheus", certauth.RoleAgent))
	url := "https://" + h.addr + "/metrics"
	var served *x509.Certificate
	h.waitFor("the agent to serve with the operator's web config", func() bool {
		resp, err := operatorClient.Get(url)
		if err != nil {
			return false
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		served = resp.TLS.PeerCertificates[0]
		return resp.StatusCode == http.StatusOK && seriesValue(string(body), stateSeries("token_needed")) == 1
	})
	if served.Subject.CommonName != "agent.operator.example" || !bytes.Equal(served.RawIssuer, operator.cert.RawSubject) {
		t.Errorf("served certificate %q issued by %q, want the operator's", served.Subject.CommonName, served.Issuer.CommonName)
	}

	fleetDiscovery := h.ca.tlsCert(t, "prometheus", certauth.RoleDiscovery)
	refused := []struct {
		name   string
		client *http.Client
	}{
		{"no client certificate", mtlsClient(t, operator.pool)},
		{"a client certificate from the fleet CA, not the configured client CA", mtlsClient(t, operator.pool, fleetDiscovery)},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			if resp, err := tt.client.Get(url); err == nil {
				resp.Body.Close()
				t.Fatalf("got %s, want the TLS handshake refused", resp.Status)
			}
		})
	}
}

// TestRun_OperatorWebConfigWithAgentCertificate: an operator's web config
// may serve the agent's own certificate from the state directory, here to
// add basic auth. Those files appear only at enrollment, so the agent waits
// for them instead of failing to start.
func TestRun_OperatorWebConfigWithAgentCertificate(t *testing.T) {
	h := newHarness(t)
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	webConfig := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(webConfig, []byte(fmt.Sprintf(`tls_server_config:
  cert_file: %[1]s/cert.pem
  key_file: %[1]s/key.pem
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: %[1]s/ca.crt
basic_auth_users:
  prometheus: %[2]s
`, h.dir, hash)), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := h.config()
	cfg.Web.WebConfigFile = &webConfig
	h.writeToken("good-token", true)
	h.start(cfg)

	get := func(user, pass string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, "https://"+h.addr+"/metrics", nil)
		if user != "" {
			req.SetBasicAuth(user, pass)
		}
		resp, err := h.scraper.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	h.waitFor("the agent to enroll and serve its certificate", func() bool {
		status, body := get("prometheus", "s3cret")
		return status == http.StatusOK && seriesValue(body, stateSeries("registered")) == 1
	})
	if status, _ := get("", ""); status != http.StatusUnauthorized {
		t.Errorf("scrape without basic auth: %d, want 401", status)
	}
	if status, _ := get("prometheus", "wrong"); status != http.StatusUnauthorized {
		t.Errorf("scrape with a wrong password: %d, want 401", status)
	}
	if _, err := os.Stat(filepath.Join(h.dir, WebConfigFile)); err == nil {
		t.Error("the agent wrote its own web config although the operator gave one")
	}
}

// TestRun_RefusesBrokenOperatorWebConfig: a web config that does not parse
// stops the agent at start with the file named, as node_exporter does.
func TestRun_RefusesBrokenOperatorWebConfig(t *testing.T) {
	h := newHarness(t)
	webConfig := filepath.Join(t.TempDir(), "web.yml")
	if err := os.WriteFile(webConfig, []byte("tls_server_config:\n  no_such_key: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := h.config()
	cfg.Web.WebConfigFile = &webConfig
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := Run(ctx, cfg); err == nil || !strings.Contains(err.Error(), "web.yml") {
		t.Fatalf("Run = %v, want an error naming the web config", err)
	}
}

func TestRun_ShutdownWithoutCertificate(t *testing.T) {
	h := newHarness(t)
	r := h.start(h.config())
	h.waitFor("the agent to ask for a token", func() bool {
		return strings.Contains(h.logs.String(), "A new enrollment token is needed")
	})
	if err := r.stop(); err != nil {
		t.Fatalf("Run returned %v, want nil", err)
	}
}

func TestRun_RelaysExporters(t *testing.T) {
	upstream := newUpstream(t, "# TYPE relayed_test gauge\nrelayed_test 42\n")
	h := newHarness(t)
	cfg := h.config()
	cfg.RelayConfigFile = writeRelayConfig(t, "node", upstream)
	_, id := h.enrolled(cfg)

	a, _ := h.fake.agent(id)
	if len(a.req.Exporters) != 1 || a.req.Exporters[0].Name != "node" || a.req.Exporters[0].Path != "/exporters/node/metrics" {
		t.Errorf("registered exporters = %+v", a.req.Exporters)
	}
	resp, body, err := h.get("/exporters/node/metrics")
	if err != nil || resp.StatusCode != http.StatusOK || !strings.Contains(body, "relayed_test") {
		t.Errorf("relay: %v, %v, %.300q", resp, err, body)
	}
	_, landing, _ := h.get("/")
	if !strings.Contains(landing, "/exporters/node/metrics") {
		t.Errorf("landing page does not link the exporter: %.300q", landing)
	}
}

func TestRun_RefusesReservedExporterName(t *testing.T) {
	h := newHarness(t)
	cfg := h.config()
	cfg.RelayConfigFile = writeRelayConfig(t, protocol.AgentExporterName, "http://127.0.0.1:1/metrics")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := Run(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), protocol.AgentExporterName) {
		t.Fatalf("Run error = %v, want the reserved name %q refused", err, protocol.AgentExporterName)
	}
}

func newUpstream(t *testing.T, body string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/metrics"
}

func writeRelayConfig(t *testing.T, name, url string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "relay.yml")
	content := fmt.Sprintf("exporters:\n  - name: %s\n    url: %s\n", name, url)
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}
