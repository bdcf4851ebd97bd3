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
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/yamux"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/internal/testca"
)

// directory is the registry as the tunnel server sees it, for tests that
// change agents' state directly.
type directory struct {
	mu     sync.Mutex
	agents map[string]Agent
	gen    uint64
}

func (d *directory) Agent(id string) (Agent, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	a, ok := d.agents[id]
	return a, ok
}

func (d *directory) CheckCertificate(id, _ string) error {
	if a, ok := d.Agent(id); !ok || !a.Listed {
		return errors.New("revoked or unknown")
	}
	return nil
}

func (d *directory) Generation() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.gen
}

func (d *directory) set(a Agent) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.agents[a.ID] = a
	d.gen++
}

// setUnannounced changes an agent without changing the generation: the
// registry has the change, the server's sweep has not seen it yet.
func (d *directory) setUnannounced(a Agent) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.agents[a.ID] = a
}

// fleet is a CA, a tunnel server on TLS, and the certificates of the
// parties that talk to it.
type fleet struct {
	dataDir   string
	authority *ca.Authority
	dir       *directory
	tunnels   *Server
	metrics   *ServerMetrics
	url       string
	// scraperRoots is what the proxied job's ca_file holds: the server CA
	// and the agent CA.
	scraperRoots *x509.CertPool
	serverRoots  *x509.CertPool
	scraper      tls.Certificate
}

func newFleet(t testing.TB, cfg ServerConfig) *fleet {
	t.Helper()
	return newFleetTrusting(t, cfg)
}

// newFleetTrusting is newFleet with extra CAs in the TLS layer's client
// CA list, as an operator's web config may hold (a company CA besides the
// baremetal_sd ones).
func newFleetTrusting(t testing.TB, cfg ServerConfig, extra ...*x509.Certificate) *fleet {
	t.Helper()
	dataDir := t.TempDir()
	authority, _, err := ca.LoadOrCreate(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := authority.EnsureServingCert(dataDir, []string{"localhost", "127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	serving, err := tls.LoadX509KeyPair(filepath.Join(dataDir, ca.ServerCertFile), filepath.Join(dataDir, ca.ServerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AppendCertsFromPEM(authority.ClientCAsPEM())
	for _, c := range extra {
		clientCAs.AddCert(c)
	}

	f := &fleet{dataDir: dataDir, authority: authority, dir: &directory{agents: map[string]Agent{}}}
	f.metrics = NewServerMetrics(prometheus.NewRegistry())
	cfg.Authority, cfg.Directory, cfg.Metrics = authority, f.dir, f.metrics
	f.tunnels = NewServer(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); f.tunnels.Run(ctx) }()

	mux := http.NewServeMux()
	mux.HandleFunc("GET "+Path, f.tunnels.ServeTunnel)
	srv := &http.Server{Handler: f.tunnels.Wrap(mux), ReadHeaderTimeout: 2 * time.Second}
	srv.TLSConfig = &tls.Config{
		Certificates: []tls.Certificate{serving},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    clientCAs,
		NextProtos:   []string{"h2", "http/1.1"},
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.ServeTLS(l, "", "") }()
	t.Cleanup(func() {
		_ = srv.Close()
		cancel()
		<-runDone
	})
	f.url = "https://" + l.Addr().String()

	f.serverRoots = x509.NewCertPool()
	f.serverRoots.AddCert(authority.Certificate())
	f.scraperRoots = x509.NewCertPool()
	f.scraperRoots.AddCert(authority.Certificate())
	f.scraperRoots.AddCert(authority.AgentCACertificate())
	certPEM, keyPEM, err := authority.IssueClient("prometheus", ca.RoleDiscovery, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if f.scraper, err = tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return f
}

// agentCert issues an agent certificate for id and hostname.
func (f *fleet) agentCert(t testing.TB, id, hostname string) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, chain, err := f.authority.SignAgent(ca.AgentCertRequest{AgentID: id, Hostname: hostname, Address: "192.0.2.7", PublicKey: &key.PublicKey, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(chain, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// startAgent runs an agent's relay listener (TLS with its certificate,
// scrapers' certificates only) and its tunnel client; it returns the
// relay's port.
func (f *fleet) startAgent(t testing.TB, id, hostname string, body func(w http.ResponseWriter)) int {
	t.Helper()
	return f.startAgentHandler(t, id, hostname, func(w http.ResponseWriter, _ *http.Request) { body(w) })
}

// startAgentHandler is startAgent with a handler that sees the request.
// The relay takes scrapers only, and the tunnel dials it over TCP.
func (f *fleet) startAgentHandler(t testing.TB, id, hostname string, body func(w http.ResponseWriter, r *http.Request)) int {
	t.Helper()
	return f.startRelay(t, id, hostname, func(w http.ResponseWriter, r *http.Request) {
		if role, _, err := ca.Identify(r.TLS.PeerCertificates[0]); err != nil || role != ca.RoleDiscovery {
			http.Error(w, "scrapers only", http.StatusForbidden)
			return
		}
		body(w, r)
	}, false)
}

// startRelay starts an agent's relay serving handler over TLS with the
// agent's certificate, and its tunnel to the fleet's server. The tunnel
// hands its streams to the relay in process (inProcess, as the agent runs)
// or dials the relay's TCP address. It returns the relay's port once the
// tunnel is up.
func (f *fleet) startRelay(t testing.TB, id, hostname string, handler http.HandlerFunc, inProcess bool) int {
	t.Helper()
	cert := f.agentCert(t, id, hostname)
	clientCA := x509.NewCertPool()
	clientCA.AddCert(f.authority.ClientCACertificate())
	relay := &http.Server{
		Handler:           handler,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCA},
		ReadHeaderTimeout: 2 * time.Second,
	}
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg := ClientConfig{
		Servers:    []string{f.url},
		TLS:        &tls.Config{RootCAs: f.serverRoots, Certificates: []tls.Certificate{cert}},
		MinBackoff: 10 * time.Millisecond,
		MaxBackoff: 100 * time.Millisecond,
	}
	l := tcp
	if inProcess {
		cfg.Listener = NewListener(tcp)
		l = cfg.Listener
	} else {
		cfg.Local = tcp.Addr().String()
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = relay.ServeTLS(l, "", "") }()
	port := tcp.Addr().(*net.TCPAddr).Port
	f.dir.set(Agent{ID: id, Hostname: hostname, Port: port, Listed: true, Tunnel: true})
	c, err := NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		_ = relay.Close()
		<-served
	})
	f.waitTunnels(t, func(int) bool { return f.hasTunnel(hostname) })
	return port
}

func (f *fleet) hasTunnel(hostname string) bool {
	f.tunnels.mu.Lock()
	defer f.tunnels.mu.Unlock()
	return len(f.tunnels.byHost[strings.ToLower(hostname)]) > 0
}

// waitTunnels polls the number of tunnels until ok or a deadline.
func (f *fleet) waitTunnels(t testing.TB, ok func(int) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !ok(f.tunnels.Tunnels()) {
		if time.Now().After(deadline) {
			t.Fatalf("tunnels: %d, not what the test waits for", f.tunnels.Tunnels())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scrapeClient is Prometheus' setup: proxy_url to the server, one TLS
// config for both hops, and enable_http2: false. Go's transport offers the
// job's ALPN list to the proxy too, and then writes an HTTP/1.1 CONNECT
// whatever the proxy chose: with h2 offered and a server that speaks h2 the
// CONNECT fails (TestServer_HTTP2JobFails).
func (f *fleet) scrapeClient(cert tls.Certificate, roots *x509.CertPool) *http.Client {
	proxy, _ := url.Parse(f.url)
	return &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy:           http.ProxyURL(proxy),
			TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}},
		},
	}
}

func TestServer_ScrapeThroughTunnel(t *testing.T) {
	f := newFleet(t, ServerConfig{})
	port := f.startAgent(t, "a1", "host-a", func(w http.ResponseWriter) { _, _ = io.WriteString(w, "up 1\n") })
	c := f.scrapeClient(f.scraper, f.scraperRoots)
	for range 3 { // several requests on one proxied connection and after
		resp, err := c.Get("https://host-a:" + strconv.Itoa(port) + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || string(body) != "up 1\n" {
			t.Fatalf("scrape: %d %q", resp.StatusCode, body)
		}
		c.CloseIdleConnections()
	}
	if got := testutil.ToFloat64(f.metrics.Opened); got != 3 {
		t.Errorf("streams opened: %v, want 3", got)
	}
	if got := testutil.ToFloat64(f.metrics.Bytes.WithLabelValues("from_agent")); got == 0 {
		t.Error("no bytes counted from the agent")
	}
}

// connect sends one CONNECT with cert (nil: none) and returns the status
// line's code.
func (f *fleet) connect(t *testing.T, cert *tls.Certificate, target string) int {
	t.Helper()
	cfg := &tls.Config{RootCAs: f.serverRoots, ServerName: "localhost"}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	conn, err := tls.Dial("tcp", strings.TrimPrefix(f.url, "https://"), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
	resp, err := http.ReadResponse(bufio.NewReader(conn), &http.Request{Method: http.MethodConnect})
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode
}

func TestServer_ConnectRefusals(t *testing.T) {
	f := newFleet(t, ServerConfig{})
	port := f.startAgent(t, "a1", "host-a", func(w http.ResponseWriter) { _, _ = io.WriteString(w, "up 1\n") })
	f.dir.set(Agent{ID: "a2", Hostname: "host-b", Port: 9100, Listed: true, Tunnel: false})
	agentCert := f.agentCert(t, "a1", "host-a")
	admin := func() tls.Certificate {
		c, k, err := f.authority.IssueClient("ops", ca.RoleAdmin, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}()
	// Whoever holds the agent CA's key (it signs every enrollment) must
	// still not be able to scrape.
	discoveryFromAgentCA := f.signWith(t, ca.AgentCACertFile, ca.AgentCAKeyFile, "prometheus", ca.RoleDiscovery)
	noRole := f.signWith(t, ca.ClientCACertFile, ca.ClientCAKeyFile, "prometheus", "")
	good := "host-a:" + strconv.Itoa(port)
	for _, tc := range []struct {
		name   string
		cert   *tls.Certificate
		target string
		want   int
		reason string
	}{
		{"no certificate", nil, good, http.StatusUnauthorized, "no_certificate"},
		{"agent certificate", &agentCert, good, http.StatusForbidden, "not_scraper"},
		{"discovery role from the agent CA", &discoveryFromAgentCA, good, http.StatusForbidden, "wrong_issuer"},
		{"certificate without a role", &noRole, good, http.StatusUnauthorized, "no_certificate"},
		{"unknown host", &f.scraper, "host-zz:" + strconv.Itoa(port), http.StatusNotFound, "unknown_target"},
		{"agent without tunnel", &f.scraper, "host-b:9100", http.StatusNotFound, "unknown_target"},
		{"another port", &f.scraper, "host-a:22", http.StatusForbidden, "port_refused"},
		{"the server itself", &f.scraper, strings.TrimPrefix(f.url, "https://"), http.StatusNotFound, "unknown_target"},
		{"not host:port", &f.scraper, "host-a", http.StatusBadRequest, "bad_target"},
		{"port zero", &f.scraper, "host-a:0", http.StatusBadRequest, "bad_target"},
		{"admin may", &admin, good, http.StatusOK, ""},
		{"scraper may", &f.scraper, good, http.StatusOK, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before float64
			if tc.reason != "" {
				before = testutil.ToFloat64(f.metrics.Refusals.WithLabelValues(tc.reason))
			}
			if got := f.connect(t, tc.cert, tc.target); got != tc.want {
				t.Fatalf("CONNECT %s: %d, want %d", tc.target, got, tc.want)
			}
			if tc.reason != "" {
				if got := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues(tc.reason)); got != before+1 {
					t.Errorf("refusals{reason=%q}: %v, want %v", tc.reason, got, before+1)
				}
			}
		})
	}
}

func TestServer_TunnelRefusals(t *testing.T) {
	f := newFleet(t, ServerConfig{})
	f.dir.set(Agent{ID: "off", Hostname: "host-off", Port: 9100, Listed: true})
	f.dir.set(Agent{ID: "gone", Hostname: "host-gone", Port: 9100, Listed: false, Tunnel: true})
	f.dir.set(Agent{ID: "ok", Hostname: "host-ok", Port: 9100, Listed: true, Tunnel: true})
	upgrade := "Connection: Upgrade\r\nUpgrade: " + Protocol + "\r\n"
	for _, tc := range []struct {
		name   string
		cert   func() tls.Certificate
		want   int
		reason string
	}{
		{"scraper certificate", func() tls.Certificate { return f.scraper }, http.StatusForbidden, "not_agent"},
		// The client CA issues Prometheus' and operators' certificates;
		// its key must not be enough to act as an agent.
		{"agent role from the client CA", func() tls.Certificate {
			return f.signWith(t, ca.ClientCACertFile, ca.ClientCAKeyFile, "ok", ca.RoleAgent)
		}, http.StatusForbidden, "wrong_issuer"},
		{"agent that did not ask for tunnels", func() tls.Certificate { return f.agentCert(t, "off", "host-off") }, http.StatusForbidden, "not_tunneled"},
		{"revoked agent", func() tls.Certificate { return f.agentCert(t, "gone", "host-gone") }, http.StatusForbidden, "agent_refused"},
		{"tunneled agent", func() tls.Certificate { return f.agentCert(t, "ok", "host-ok") }, http.StatusSwitchingProtocols, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before float64
			if tc.reason != "" {
				before = testutil.ToFloat64(f.metrics.Refusals.WithLabelValues(tc.reason))
			}
			if resp := f.upgrade(t, tc.cert(), upgrade, nil); resp.StatusCode != tc.want {
				t.Fatalf("upgrade: %d, want %d", resp.StatusCode, tc.want)
			}
			if tc.reason != "" {
				if got := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues(tc.reason)); got != before+1 {
					t.Errorf("refusals{reason=%q}: %v, want %v", tc.reason, got, before+1)
				}
			}
		})
	}
}

func TestServer_RevocationClosesTunnel(t *testing.T) {
	f := newFleet(t, ServerConfig{})
	port := f.startAgent(t, "a1", "host-a", func(w http.ResponseWriter) { _, _ = io.WriteString(w, "up 1\n") })
	f.dir.set(Agent{ID: "a1", Hostname: "host-a", Port: port, Listed: false, Tunnel: true})
	f.waitTunnels(t, func(n int) bool { return n == 0 })
	if got := f.connect(t, &f.scraper, "host-a:"+strconv.Itoa(port)); got != http.StatusNotFound {
		t.Fatalf("CONNECT after revocation: %d, want 404", got)
	}
	// The agent keeps trying, and is refused every time.
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("agent_refused")) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the revoked agent's reconnections were not refused")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := f.tunnels.Tunnels(); n != 0 {
		t.Fatalf("a revoked agent holds %d tunnels", n)
	}
}

func TestServer_StreamLimitAndFlood(t *testing.T) {
	f := newFleet(t, ServerConfig{MaxStreamsPerAgent: 2})
	release := make(chan struct{})
	held := make(chan struct{}, 3)
	port := f.startAgent(t, "a1", "host-a", func(w http.ResponseWriter) {
		held <- struct{}{}
		<-release
		_, _ = io.WriteString(w, "up 1\n")
	})
	target := "https://host-a:" + strconv.Itoa(port) + "/metrics"
	// Two scrapes hold both streams.
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			c := f.scrapeClient(f.scraper, f.scraperRoots)
			resp, err := c.Get(target)
			if err == nil {
				resp.Body.Close()
			}
			c.CloseIdleConnections()
			errs <- err
		}()
	}
	for range 2 {
		select {
		case <-held:
		case err := <-errs:
			t.Fatalf("a scrape ended before the agent held it: %v", err)
		case <-time.After(10 * time.Second):
			t.Fatal("the scrapes did not reach the agent")
		}
	}
	// A flood of CONNECTs beyond the limit: every one refused at once.
	const flood = 200
	for i := range flood {
		if got := f.connect(t, &f.scraper, "host-a:"+strconv.Itoa(port)); got != http.StatusTooManyRequests {
			t.Fatalf("CONNECT %d over the limit: %d, want 429", i, got)
		}
	}
	if got := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("too_many_streams")); got != flood {
		t.Errorf("refusals{reason=\"too_many_streams\"}: %v, want %d", got, flood)
	}
	close(release)
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	// Once those connections are closed, the agent serves again.
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(f.metrics.Streams) != 0 {
		if time.Now().After(deadline) {
			t.Fatal("the held streams were not released")
		}
		time.Sleep(5 * time.Millisecond)
	}
	resp, err := f.scrapeClient(f.scraper, f.scraperRoots).Get(target)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape after the flood: %d", resp.StatusCode)
	}
}

func TestServer_IdleStreamClosed(t *testing.T) {
	f := newFleet(t, ServerConfig{IdleTimeout: 200 * time.Millisecond})
	port := f.startAgent(t, "a1", "host-a", func(w http.ResponseWriter) { _, _ = io.WriteString(w, "up 1\n") })
	conn, err := tls.Dial("tcp", strings.TrimPrefix(f.url, "https://"), &tls.Config{RootCAs: f.serverRoots, ServerName: "localhost", Certificates: []tls.Certificate{f.scraper}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "CONNECT host-a:%d HTTP/1.1\r\nHost: host-a\r\n\r\n", port)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT: %v %v", resp, err)
	}
	// A slow client that never starts its TLS handshake: the server drops
	// the stream after the idle timeout instead of holding it forever.
	if _, err := io.Copy(io.Discard, br); err != nil {
		t.Fatalf("the idle stream was not closed by the server: %v", err)
	}
}

// TestServer_HTTP2JobFails documents why the proxied job needs
// enable_http2: false: with h2 in the job's ALPN list the proxy hop
// negotiates h2 and Go's transport still sends an HTTP/1.1 CONNECT.
func TestServer_HTTP2JobFails(t *testing.T) {
	f := newFleet(t, ServerConfig{})
	port := f.startAgent(t, "a1", "host-a", func(w http.ResponseWriter) { _, _ = io.WriteString(w, "up 1\n") })
	c := f.scrapeClient(f.scraper, f.scraperRoots)
	c.Transport.(*http.Transport).ForceAttemptHTTP2 = true
	resp, err := c.Get("https://host-a:" + strconv.Itoa(port) + "/metrics")
	if err == nil {
		resp.Body.Close()
		t.Error("a job with HTTP/2 scraped through the tunnel: this Go release no longer breaks CONNECT over an h2 proxy connection, so docs/tunnels.md and the examples may drop enable_http2: false")
	}
}

// signWith issues a client certificate with role (none if empty) from the
// issuer whose files are in the fleet's data directory, bypassing the
// checks of the ca package: what a thief of that key could do.
func (f *fleet) signWith(t testing.TB, certFile, keyFile, name string, role ca.Role) tls.Certificate {
	t.Helper()
	issuer := testca.Load(t, filepath.Join(f.dataDir, certFile), filepath.Join(f.dataDir, keyFile))
	return issueClient(t, issuer, name, role)
}

// foreignCA is a CA of nobody we know.
func foreignCA(t testing.TB) *testca.CA {
	return testca.New(t, "corporate CA")
}

// issueClient issues a client certificate in the layout of ours (role in
// the OU, id in the CN) from any issuer, and presents the issuer with it.
func issueClient(t testing.TB, issuer *testca.CA, name string, role ca.Role) tls.Certificate {
	t.Helper()
	l := testca.Leaf{CommonName: name, DNSNames: []string{name}, Usage: testca.ClientAuth}
	if role != "" {
		l.OrganizationalUnit = []string{ca.RoleOU(role)}
	}
	return issuer.Issue(t, l).TLSChain()
}

// TestServer_ForeignCA: an operator's web config may trust another CA for
// client certificates (a company CA for its own tools). A certificate of
// that CA written to look like ours — role in the OU — passes the TLS
// layer, and the server must still refuse it on both endpoints.
func TestServer_ForeignCA(t *testing.T) {
	foreign := foreignCA(t)
	f := newFleetTrusting(t, ServerConfig{}, foreign.Cert)
	port := f.startAgent(t, "a1", "host-a", func(w http.ResponseWriter) { _, _ = io.WriteString(w, "up 1\n") })
	good := "host-a:" + strconv.Itoa(port)

	t.Run("CONNECT", func(t *testing.T) {
		for _, role := range []ca.Role{ca.RoleDiscovery, ca.RoleAdmin} {
			cert := issueClient(t, foreign, "prometheus", role)
			before := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("no_certificate"))
			if got := f.connect(t, &cert, good); got != http.StatusUnauthorized {
				t.Fatalf("CONNECT with a %s certificate of a foreign CA: %d, want 401", role, got)
			}
			if got := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("no_certificate")); got != before+1 {
				t.Errorf("refusals{reason=\"no_certificate\"}: %v, want %v", got, before+1)
			}
		}
	})
	t.Run("tunnel", func(t *testing.T) {
		// A foreign certificate naming a registered, tunneled agent must
		// not take over its tunnel.
		cert := issueClient(t, foreign, "a1", ca.RoleAgent)
		resp := f.upgrade(t, cert, "Connection: Upgrade\r\nUpgrade: "+Protocol+"\r\n", nil)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("tunnel with an agent certificate of a foreign CA: %d, want 401", resp.StatusCode)
		}
		// The real agent's tunnel is still the one in place.
		if got := f.connect(t, &f.scraper, good); got != http.StatusOK {
			t.Fatalf("CONNECT to the real agent: %d, want 200", got)
		}
	})
}

// upgrade sends a tunnel upgrade request with cert, the given header lines
// and then extra bytes, and returns the server's answer.
func (f *fleet) upgrade(t *testing.T, cert tls.Certificate, headers string, extra []byte) *http.Response {
	t.Helper()
	conn, err := tls.Dial("tcp", strings.TrimPrefix(f.url, "https://"), &tls.Config{RootCAs: f.serverRoots, ServerName: "localhost", Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n%s", Path, headers, extra)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

// TestServer_AmbiguousHostname: two agents registered under one hostname
// both hold a certificate for it, so whichever the server picked, the
// scraper's TLS check would pass. The server must refuse to choose, even
// when the port names one of them, until only one is left.
func TestServer_AmbiguousHostname(t *testing.T) {
	f := newFleet(t, ServerConfig{})
	ok := func(w http.ResponseWriter) { _, _ = io.WriteString(w, "up 1\n") }
	port1 := f.startAgent(t, "a1", "host-a", ok)
	port2 := f.startAgent(t, "a2", "HOST-A", ok)
	deadline := time.Now().Add(10 * time.Second)
	for f.tunnels.Tunnels() < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the second agent's tunnel did not come up")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, target := range []string{"host-a:" + strconv.Itoa(port1), "Host-A:" + strconv.Itoa(port2)} {
		before := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("ambiguous_target"))
		if got := f.connect(t, &f.scraper, target); got != http.StatusConflict {
			t.Fatalf("CONNECT %s with two agents of that name: %d, want 409", target, got)
		}
		if got := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("ambiguous_target")); got != before+1 {
			t.Errorf("refusals{reason=\"ambiguous_target\"}: %v, want %v", got, before+1)
		}
	}
	// Revoking one leaves the name to the other.
	f.dir.set(Agent{ID: "a2", Hostname: "HOST-A", Port: port2, Listed: false, Tunnel: true})
	f.waitTunnels(t, func(n int) bool { return n == 1 })
	if got := f.connect(t, &f.scraper, "host-a:"+strconv.Itoa(port1)); got != http.StatusOK {
		t.Fatalf("CONNECT once the other agent is revoked: %d, want 200", got)
	}
}

// TestServer_ConnectRechecksAgent: the registry may know of a revocation
// before the server's sweep closes the tunnel (on another replica, or
// within the sweep interval); CONNECT asks the registry itself.
func TestServer_ConnectRechecksAgent(t *testing.T) {
	for _, tc := range []struct {
		name  string
		agent func(port int) Agent
	}{
		{"revoked", func(port int) Agent { return Agent{ID: "a1", Hostname: "host-a", Port: port, Tunnel: true} }},
		{"no longer tunneled", func(port int) Agent { return Agent{ID: "a1", Hostname: "host-a", Port: port, Listed: true} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t, ServerConfig{})
			port := f.startAgent(t, "a1", "host-a", func(w http.ResponseWriter) { _, _ = io.WriteString(w, "up 1\n") })
			f.dir.setUnannounced(tc.agent(port))
			if got := f.connect(t, &f.scraper, "host-a:"+strconv.Itoa(port)); got != http.StatusNotFound {
				t.Fatalf("CONNECT: %d, want 404", got)
			}
			if got := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("revoked")); got != 1 {
				t.Errorf("refusals{reason=\"revoked\"}: %v, want 1", got)
			}
			// And the tunnel is closed then and there.
			f.waitTunnels(t, func(n int) bool { return n == 0 })
		})
	}
}

// TestServer_TunnelLimit: a server at MaxTunnels refuses the next agent.
func TestServer_TunnelLimit(t *testing.T) {
	f := newFleet(t, ServerConfig{MaxTunnels: 1})
	f.startAgent(t, "a1", "host-a", func(w http.ResponseWriter) { _, _ = io.WriteString(w, "up 1\n") })
	f.dir.set(Agent{ID: "a2", Hostname: "host-b", Port: 9100, Listed: true, Tunnel: true})
	resp := f.upgrade(t, f.agentCert(t, "a2", "host-b"), "Connection: Upgrade\r\nUpgrade: "+Protocol+"\r\n", nil)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("tunnel beyond the limit: %d, want 503", resp.StatusCode)
	}
	if got := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("too_many_tunnels")); got != 1 {
		t.Errorf("refusals{reason=\"too_many_tunnels\"}: %v, want 1", got)
	}
	if n := f.tunnels.Tunnels(); n != 1 {
		t.Errorf("tunnels: %d, want 1", n)
	}
}

// TestServer_BadUpgrade: a tunnel request that is not a clean HTTP/1.1
// upgrade is refused and counted, and takes no tunnel.
func TestServer_BadUpgrade(t *testing.T) {
	f := newFleet(t, ServerConfig{})
	f.dir.set(Agent{ID: "a1", Hostname: "host-a", Port: 9100, Listed: true, Tunnel: true})
	cert := f.agentCert(t, "a1", "host-a")
	for _, tc := range []struct {
		name    string
		headers string
		extra   []byte
		want    int
	}{
		{"no upgrade", "", nil, http.StatusUpgradeRequired},
		{"another protocol", "Connection: Upgrade\r\nUpgrade: websocket\r\n", nil, http.StatusUpgradeRequired},
		{"upgrade without Connection", "Upgrade: " + Protocol + "\r\n", nil, http.StatusUpgradeRequired},
		// yamux bytes before the 101: the server must not hand a
		// half-read stream to the multiplexer.
		{"data before the switch", "Connection: Upgrade\r\nUpgrade: " + Protocol + "\r\n", []byte("\x00\x01\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00"), http.StatusSwitchingProtocols},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("bad_request"))
			conn, err := tls.Dial("tcp", strings.TrimPrefix(f.url, "https://"), &tls.Config{RootCAs: f.serverRoots, ServerName: "localhost", Certificates: []tls.Certificate{cert}, NextProtos: []string{"http/1.1"}})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: localhost\r\n%s\r\n%s", Path, tc.headers, tc.extra)
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if tc.want == http.StatusSwitchingProtocols {
				// Refused by closing the connection, not with a status:
				// the request itself was well formed.
				if err == nil {
					t.Fatalf("the server answered %d to a tunnel request followed by data", resp.StatusCode)
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if resp.StatusCode != tc.want {
					t.Fatalf("upgrade: %d, want %d", resp.StatusCode, tc.want)
				}
			}
			if got := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("bad_request")); got != before+1 {
				t.Errorf("refusals{reason=\"bad_request\"}: %v, want %v", got, before+1)
			}
			if n := f.tunnels.Tunnels(); n != 0 {
				t.Errorf("tunnels: %d, want 0", n)
			}
		})
	}
	t.Run("CONNECT over HTTP/2", func(t *testing.T) {
		before := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("bad_request"))
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{RootCAs: f.serverRoots, ServerName: "localhost", Certificates: []tls.Certificate{f.scraper}},
			ForceAttemptHTTP2: true,
		}}
		req, err := http.NewRequest(http.MethodConnect, f.url, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "host-a:9100"
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusHTTPVersionNotSupported {
			t.Fatalf("CONNECT over %s: %d, want 505 over HTTP/2", resp.Proto, resp.StatusCode)
		}
		if got := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("bad_request")); got != before+1 {
			t.Errorf("refusals{reason=\"bad_request\"}: %v, want %v", got, before+1)
		}
	})
}

// rawTunnel opens a tunnel as agent a1 and returns its connection right
// after the 101, for a test to speak the tunnel protocol on.
func (f *fleet) rawTunnel(t *testing.T) *tls.Conn {
	t.Helper()
	conn, err := tls.Dial("tcp", strings.TrimPrefix(f.url, "https://"), &tls.Config{RootCAs: f.serverRoots, ServerName: "localhost", Certificates: []tls.Certificate{f.agentCert(t, "a1", "host-a")}, NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: %s\r\n\r\n", Path, Protocol)
	// Read the 101 byte by byte: the frames that follow are not the HTTP
	// reader's.
	var head []byte
	one := make([]byte, 1)
	for !strings.HasSuffix(string(head), "\r\n\r\n") {
		if _, err := conn.Read(one); err != nil {
			t.Fatalf("upgrade: %v after %q", err, head)
		}
		head = append(head, one[0])
	}
	if !strings.HasPrefix(string(head), "HTTP/1.1 101 ") {
		t.Fatalf("upgrade: %q", head)
	}
	return conn
}

// TestServer_AgentRefusesStreams: an agent (hostile or shutting down) that
// sends GoAway takes no more streams: the server drops its tunnel, and
// CONNECT finds none.
func TestServer_AgentRefusesStreams(t *testing.T) {
	f := newFleet(t, ServerConfig{})
	f.dir.set(Agent{ID: "a1", Hostname: "host-a", Port: 9100, Listed: true, Tunnel: true})
	conn := f.rawTunnel(t)
	cfg := yamux.DefaultConfig()
	cfg.LogOutput = io.Discard
	mux, err := yamux.Server(conn, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer mux.Close()
	// The server answers a ping, then takes the GoAway.
	if _, err := mux.Ping(); err != nil {
		t.Fatal(err)
	}
	f.waitTunnels(t, func(n int) bool { return n == 1 })
	// yamux waits for its GoAway to be written; the server may close the
	// tunnel first, on reading it.
	if err := mux.GoAway(); err != nil && !errors.Is(err, yamux.ErrSessionShutdown) {
		t.Fatal(err)
	}
	select {
	case <-mux.CloseChan():
	case <-time.After(10 * time.Second):
		t.Fatal("the server kept the tunnel of an agent that sent GoAway")
	}
	f.waitTunnels(t, func(n int) bool { return n == 0 })
	if got := f.connect(t, &f.scraper, "host-a:9100"); got != http.StatusNotFound {
		t.Fatalf("CONNECT to an agent that refuses streams: %d, want 404", got)
	}
	if got := testutil.ToFloat64(f.metrics.Refusals.WithLabelValues("unknown_target")); got != 1 {
		t.Errorf("refusals{reason=\"unknown_target\"}: %v, want 1", got)
	}
}

// TestServer_AgentBreaksProtocol: an agent that sends what the tunnel
// protocol forbids loses its tunnel, and the reason is counted; one that
// opens a stream towards the server gets it reset and keeps its tunnel.
func TestServer_AgentBreaksProtocol(t *testing.T) {
	frame := func(version, typ byte, flags uint16, id, length uint32) []byte {
		return []byte{version, typ, byte(flags >> 8), byte(flags), byte(id >> 24), byte(id >> 16), byte(id >> 8), byte(id), byte(length >> 24), byte(length >> 16), byte(length >> 8), byte(length)}
	}
	for _, tc := range []struct {
		name   string
		send   []byte
		reason string
		closes bool
	}{
		{"bad version", frame(1, 2, 1, 0, 0), "bad_version", true},
		{"unknown type", frame(0, 9, 0, 0, 0), "bad_type", true},
		{"data for a stream never opened", frame(0, 0, 0, 9, 0xffffffff), "unknown_stream", true},
		{"agent opens a stream", frame(0, 1, 1, 2, 0), "peer_opened_stream", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFleet(t, ServerConfig{})
			f.dir.set(Agent{ID: "a1", Hostname: "host-a", Port: 9100, Listed: true, Tunnel: true})
			conn := f.rawTunnel(t)
			f.waitTunnels(t, func(n int) bool { return n == 1 })
			if _, err := conn.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			// A ping after it: answered only if the tunnel stays.
			if _, err := conn.Write(frame(0, 2, 1, 0, 42)); err != nil {
				t.Fatal(err)
			}
			_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			var pong bool
			for {
				var h [12]byte
				if _, err := io.ReadFull(conn, h[:]); err != nil {
					break
				}
				if h[1] == 2 && h[3] == 2 && h[11] == 42 {
					pong = true
					break
				}
			}
			if pong == tc.closes {
				t.Fatalf("ping answered: %v, want %v", pong, !tc.closes)
			}
			if tc.closes {
				f.waitTunnels(t, func(n int) bool { return n == 0 })
			} else if n := f.tunnels.Tunnels(); n != 1 {
				t.Fatalf("tunnels: %d, want 1", n)
			}
			if got := testutil.ToFloat64(f.metrics.ProtocolErrors.WithLabelValues(tc.reason)); got != 1 {
				t.Errorf("protocol_errors{reason=%q}: %v, want 1", tc.reason, got)
			}
		})
	}
}
