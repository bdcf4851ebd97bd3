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

package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/internal/testca"
)

// clientTestCA is a throw-away CA for client tests; it signs the servers'
// certificates and the client certificates.
type clientTestCA struct {
	ca   *testca.CA
	pool *x509.CertPool
}

func newClientTestCA(t *testing.T) *clientTestCA {
	t.Helper()
	ca := testca.New(t, "client test CA")
	return &clientTestCA{ca: ca, pool: ca.Pool()}
}

// issue signs a leaf for localhost usable for both server and client auth.
func (c *clientTestCA) issue(t *testing.T, cn string) *tls.Certificate {
	t.Helper()
	cert := c.ca.Issue(t, testca.Leaf{
		CommonName:  cn,
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		Usage:       testca.ServerAuth | testca.ClientAuth,
	}).TLS()
	return &cert
}

// startTLS runs handler on a TLS server with a certificate from ca that
// verifies client certificates from ca when given.
func startTLS(t *testing.T, ca *clientTestCA, handler http.Handler) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(handler)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{*ca.issue(t, "server")},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    ca.pool,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// deadURL is an https URL nothing listens on.
func deadURL(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "https://" + addr
}

func newTestClient(t *testing.T, ca *clientTestCA, urls ...string) *Client {
	t.Helper()
	c, err := NewClient(Config{URLs: urls, RootCAs: ca.pool, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return c
}

func TestNewClient_Validation(t *testing.T) {
	tests := []struct {
		name string
		urls []string
		want string
	}{
		{"none", nil, "no discovery server URL"},
		{"plain http", []string{"http://sd.example:9955"}, "scheme must be https"},
		{"no host", []string{"https://"}, "no host"},
		{"user info", []string{"https://u:p@sd.example"}, "user info"},
		{"query", []string{"https://sd.example/?a=b"}, "query"},
		{"second bad", []string{"https://sd.example", "ftp://x"}, "scheme must be https"},
		{"ok", []string{"https://sd.example:9955/", "https://10.0.0.1/prefix/"}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := NewClient(Config{URLs: tt.urls})
			if tt.want == "" {
				if err != nil {
					t.Fatalf("NewClient: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewClient error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestClient_Register(t *testing.T) {
	ca := newClientTestCA(t)
	var (
		gotAuth string
		gotReq  protocol.RegisterRequest
		gotPath string
	)
	srv := startTLS(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotAuth = r.Header.Get("Authorization")
		gotPath = r.URL.Path
		if err := json.NewDecoder(r.Body).Decode(&gotReq); err != nil {
			t.Errorf("decode: %v", err)
		}
		// The unknown field checks that answers of newer servers decode.
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"agent_id":"a1","certificate":"CERT","heartbeat_interval_seconds":30,"added_later":true}`)
	}))
	c := newTestClient(t, ca, srv.URL+"/prefix/")
	resp, err := c.Register(context.Background(), &protocol.RegisterRequest{Hostname: "h1", Port: 9956, CSR: "CSR"}, "tok")
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	if resp.AgentID != "a1" || resp.Certificate != "CERT" || resp.HeartbeatIntervalSeconds != 30 {
		t.Errorf("response = %+v", resp)
	}
	if gotAuth != "Bearer tok" {
		t.Errorf("Authorization = %q", gotAuth)
	}
	if gotPath != "/prefix"+protocol.PathRegister {
		t.Errorf("path = %q", gotPath)
	}
	if gotReq.Hostname != "h1" || gotReq.Port != 9956 || gotReq.CSR != "CSR" {
		t.Errorf("request = %+v", gotReq)
	}

	// Without a token no Authorization header is sent.
	if _, err := c.Register(context.Background(), &protocol.RegisterRequest{Hostname: "h1"}, ""); err != nil {
		t.Fatalf("Register: %v", err)
	}
	if gotAuth != "" {
		t.Errorf("Authorization without token = %q", gotAuth)
	}
}

func TestClient_Methods(t *testing.T) {
	ca := newClientTestCA(t)
	type call struct{ method, path string }
	var (
		mu    sync.Mutex
		calls []call
	)
	srv := startTLS(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		calls = append(calls, call{r.Method, r.URL.Path})
		mu.Unlock()
		switch r.URL.Path {
		case protocol.PathHeartbeat:
			writeJSON(w, http.StatusOK, protocol.HeartbeatResponse{TTLSeconds: 300, HeartbeatIntervalSeconds: 60})
		case protocol.PathRenew:
			writeJSON(w, http.StatusOK, protocol.CertificateResponse{AgentID: "a1"})
		case protocol.PathSelf:
			w.WriteHeader(http.StatusNoContent)
		default:
			writeError(w, http.StatusNotFound, "no route")
		}
	}))
	c := newTestClient(t, ca, srv.URL)
	ctx := context.Background()
	hb, err := c.Heartbeat(ctx, nil)
	if err != nil || hb.HeartbeatIntervalSeconds != 60 || hb.TTLSeconds != 300 {
		t.Fatalf("Heartbeat = %+v, %v", hb, err)
	}
	rn, err := c.Renew(ctx, &protocol.RenewRequest{CSR: "x"})
	if err != nil || rn.AgentID != "a1" {
		t.Fatalf("Renew = %+v, %v", rn, err)
	}
	if err := c.Deregister(ctx); err != nil {
		t.Fatalf("Deregister: %v", err)
	}
	want := []call{{"POST", protocol.PathHeartbeat}, {"POST", protocol.PathRenew}, {"DELETE", protocol.PathSelf}}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != len(want) {
		t.Fatalf("calls = %v, want %v", calls, want)
	}
	for i := range want {
		if calls[i] != want[i] {
			t.Errorf("call %d = %v, want %v", i, calls[i], want[i])
		}
	}
}

func TestClient_ErrorClassification(t *testing.T) {
	tests := []struct {
		name                          string
		status                        int
		body                          string
		notFound, revoked, badRequest bool
		wantMessage                   string
	}{
		{"not found", 404, `{"error":"agent not registered: register again"}`, true, false, false, "agent not registered: register again"},
		{"unauthorized", 401, `{"error":"token refused: expired"}`, false, true, false, "token refused: expired"},
		{"forbidden", 403, `{"error":"agent is revoked"}`, false, true, false, "agent is revoked"},
		{"bad request", 400, `{"error":"hostname is empty"}`, false, false, true, "hostname is empty"},
		{"server error", 500, `{"error":"internal error"}`, false, false, false, "internal error"},
		{"not json", 502, `<html>bad gateway</html>`, false, false, false, "bad gateway"},
		{"control characters", 400, `{"error":"a\u001b[31mb\nc"}`, false, false, true, "a[31mbc"},
		{"empty", 403, ``, false, true, false, "forbidden"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ca := newClientTestCA(t)
			srv := startTLS(t, ca, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(tt.status)
				_, _ = io.WriteString(w, tt.body)
			}))
			c := newTestClient(t, ca, srv.URL)
			_, err := c.Heartbeat(context.Background(), nil)
			if err == nil {
				t.Fatal("Heartbeat succeeded")
			}
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("error %v is not an *APIError", err)
			}
			if ae.Status != tt.status || ae.Message != tt.wantMessage || ae.URL != srv.URL {
				t.Errorf("APIError = %+v, want status %d message %q", ae, tt.status, tt.wantMessage)
			}
			if IsNotFound(err) != tt.notFound || IsRevoked(err) != tt.revoked || IsBadRequest(err) != tt.badRequest {
				t.Errorf("IsNotFound=%v IsRevoked=%v IsBadRequest=%v, want %v %v %v",
					IsNotFound(err), IsRevoked(err), IsBadRequest(err), tt.notFound, tt.revoked, tt.badRequest)
			}
		})
	}
}

func TestClient_ErrorMessageIsBounded(t *testing.T) {
	long := strings.Repeat("é", 2000)
	got := errorMessage(400, []byte(`{"error":"`+long+`"}`))
	if len(got) > maxErrorMessage+3 {
		t.Errorf("message has %d bytes, want at most %d", len(got), maxErrorMessage+3)
	}
	if !strings.HasSuffix(got, "...") || !strings.HasPrefix(got, "éé") {
		t.Errorf("message = %q...", got[:10])
	}
}

// countingHandler answers with status and counts requests.
type countingHandler struct {
	status int
	hits   atomic.Int64
}

func (h *countingHandler) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	h.hits.Add(1)
	if h.status != http.StatusOK {
		writeError(w, h.status, "status "+http.StatusText(h.status))
		return
	}
	writeJSON(w, http.StatusOK, protocol.HeartbeatResponse{HeartbeatIntervalSeconds: 1})
}

func TestClient_Failover(t *testing.T) {
	ca := newClientTestCA(t)
	failing := &countingHandler{status: http.StatusServiceUnavailable}
	good := &countingHandler{status: http.StatusOK}
	failingSrv := startTLS(t, ca, failing)
	goodSrv := startTLS(t, ca, good)
	c := newTestClient(t, ca, deadURL(t), failingSrv.URL, goodSrv.URL)
	ctx := context.Background()

	if _, err := c.Heartbeat(ctx, nil); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	if failing.hits.Load() != 1 || good.hits.Load() != 1 {
		t.Fatalf("hits: failing %d, good %d, want 1 and 1", failing.hits.Load(), good.hits.Load())
	}
	if c.URL() != goodSrv.URL {
		t.Fatalf("URL() = %s, want the server that answered, %s", c.URL(), goodSrv.URL)
	}
	// The server that answered last is asked first next time.
	if _, err := c.Heartbeat(ctx, nil); err != nil {
		t.Fatalf("Heartbeat: %v", err)
	}
	if failing.hits.Load() != 1 || good.hits.Load() != 2 {
		t.Fatalf("hits: failing %d, good %d, want 1 and 2", failing.hits.Load(), good.hits.Load())
	}
	// When it goes away, the others are tried in order, wrapping around.
	goodSrv.Close()
	_, err := c.Heartbeat(ctx, nil)
	if err == nil {
		t.Fatal("Heartbeat succeeded with every server down or failing")
	}
	if failing.hits.Load() != 2 {
		t.Errorf("failing server hits = %d, want 2", failing.hits.Load())
	}
	var ae *APIError
	if !errors.As(err, &ae) || ae.Status != http.StatusServiceUnavailable {
		t.Errorf("error %v does not carry the 503", err)
	}
	if IsNotFound(err) || IsRevoked(err) {
		t.Errorf("a failed round is classified as an answer: %v", err)
	}
}

func TestClient_NoFailoverOnAnswer(t *testing.T) {
	for _, status := range []int{http.StatusNotFound, http.StatusUnauthorized, http.StatusForbidden, http.StatusBadRequest} {
		t.Run(http.StatusText(status), func(t *testing.T) {
			ca := newClientTestCA(t)
			first := &countingHandler{status: status}
			second := &countingHandler{status: http.StatusOK}
			c := newTestClient(t, ca, startTLS(t, ca, first).URL, startTLS(t, ca, second).URL)
			if _, err := c.Heartbeat(context.Background(), nil); err == nil {
				t.Fatal("Heartbeat succeeded")
			}
			if first.hits.Load() != 1 || second.hits.Load() != 0 {
				t.Errorf("hits: first %d, second %d, want 1 and 0", first.hits.Load(), second.hits.Load())
			}
		})
	}
}

func TestClient_ResponseBodyLimit(t *testing.T) {
	ca := newClientTestCA(t)
	srv := startTLS(t, ca, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"agent_id":"`))
		_, _ = w.Write(bytes.Repeat([]byte("a"), 2*MaxResponseBody))
		_, _ = w.Write([]byte(`"}`))
	}))
	c := newTestClient(t, ca, srv.URL)
	_, err := c.Renew(context.Background(), &protocol.RenewRequest{CSR: "x"})
	if err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Renew error = %v, want a body size error", err)
	}
}

func TestClient_VerifiesServer(t *testing.T) {
	ca := newClientTestCA(t)
	other := newClientTestCA(t)
	srv := startTLS(t, ca, &countingHandler{status: http.StatusOK})
	c := newTestClient(t, other, srv.URL)
	_, err := c.Heartbeat(context.Background(), nil)
	var uae x509.UnknownAuthorityError
	if !errors.As(err, &uae) {
		t.Fatalf("Heartbeat error = %v, want an unknown authority error", err)
	}
}

func TestClient_Timeout(t *testing.T) {
	ca := newClientTestCA(t)
	release := make(chan struct{})
	srv := startTLS(t, ca, http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release) })
	c, err := NewClient(Config{URLs: []string{srv.URL}, RootCAs: ca.pool, Timeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Heartbeat(context.Background(), nil)
	if err == nil {
		t.Fatal("Heartbeat returned without an error from a server that never answers")
	}
}

func TestClient_ClientCertificateCallback(t *testing.T) {
	ca := newClientTestCA(t)
	seen := make(chan string, 10)
	srv := startTLS(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cn := ""
		if len(r.TLS.VerifiedChains) > 0 {
			cn = r.TLS.VerifiedChains[0][0].Subject.CommonName
		}
		seen <- cn
		w.WriteHeader(http.StatusNoContent)
	}))
	var current atomic.Pointer[tls.Certificate]
	current.Store(&tls.Certificate{}) // none yet
	c, err := NewClient(Config{
		URLs:    []string{srv.URL},
		RootCAs: ca.pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return current.Load(), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	ctx := context.Background()
	steps := []struct {
		cert *tls.Certificate
		want string
	}{
		{nil, ""},
		{ca.issue(t, "agent-1"), "agent-1"},
		{ca.issue(t, "agent-1-renewed"), "agent-1-renewed"},
	}
	for _, s := range steps {
		if s.cert != nil {
			current.Store(s.cert)
			c.CloseIdleConnections()
		}
		if err := c.Deregister(ctx); err != nil {
			t.Fatalf("Deregister: %v", err)
		}
		if got := <-seen; got != s.want {
			t.Errorf("server saw client certificate %q, want %q", got, s.want)
		}
	}
}

func TestClient_ContextCanceled(t *testing.T) {
	ca := newClientTestCA(t)
	second := &countingHandler{status: http.StatusOK}
	c := newTestClient(t, ca, deadURL(t), startTLS(t, ca, second).URL)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := c.Heartbeat(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Heartbeat error = %v, want context.Canceled", err)
	}
	if second.hits.Load() != 0 {
		t.Errorf("a canceled call still failed over: %d hits", second.hits.Load())
	}
}

func FuzzReadResponse(f *testing.F) {
	f.Add(200, []byte(`{"agent_id":"a","certificate":"x","renew_after":"2025-01-01T00:00:00Z"}`))
	f.Add(404, []byte(`{"error":"agent not registered"}`))
	f.Add(500, []byte("\x00\xff{"))
	f.Add(200, []byte(`{"renew_after":"not a time"}`))
	f.Fuzz(func(t *testing.T, status int, body []byte) {
		if status < 100 || status > 999 {
			return
		}
		resp := &http.Response{StatusCode: status, Body: io.NopCloser(bytes.NewReader(body))}
		var out protocol.CertificateResponse
		err := readResponse(resp, "https://sd.example", &out)
		var ae *APIError
		if errors.As(err, &ae) {
			if len(ae.Message) > maxErrorMessage+3 || ae.Message == "" {
				t.Fatalf("message of %d bytes", len(ae.Message))
			}
			for _, r := range ae.Message {
				if r < 0x20 || r == 0x7f {
					t.Fatalf("control character in message %q", ae.Message)
				}
			}
		}
		if status >= 200 && status <= 299 && ae != nil {
			t.Fatalf("2xx became an APIError")
		}
	})
}

// TestClient_ResumesSessionsPerCertificate: connections after the first
// resume the TLS session, but only with the client certificate it was made
// with: never a session from before enrollment once the agent has a
// certificate, and never the old certificate's session after a renewal.
func TestClient_ResumesSessionsPerCertificate(t *testing.T) {
	ca := newClientTestCA(t)
	type seen struct {
		resumed bool
		serial  string // of the client certificate, "" without one
	}
	var mu sync.Mutex
	var got seen
	srv := startTLS(t, ca, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = seen{resumed: r.TLS.DidResume}
		if len(r.TLS.PeerCertificates) > 0 {
			got.serial = r.TLS.PeerCertificates[0].SerialNumber.String()
		}
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{}`)
	}))
	var current atomic.Pointer[tls.Certificate]
	c, err := NewClient(Config{
		URLs: []string{srv.URL}, RootCAs: ca.pool, Timeout: 5 * time.Second,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if cert := current.Load(); cert != nil {
				return cert, nil
			}
			return &tls.Certificate{}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.CloseIdleConnections)
	certA := ca.issue(t, "agent")
	certB := ca.issue(t, "agent")
	serial := func(cert *tls.Certificate) string { return cert.Leaf.SerialNumber.String() }

	steps := []struct {
		name string
		cert *tls.Certificate
		want seen
	}{
		{"first connection, no certificate", nil, seen{}},
		{"resumed without a certificate", nil, seen{resumed: true}},
		{"enrolled: a full handshake with the certificate", certA, seen{serial: serial(certA)}},
		{"resumed with the certificate", certA, seen{resumed: true, serial: serial(certA)}},
		{"renewed: a full handshake with the new certificate", certB, seen{serial: serial(certB)}},
		{"resumed with the new certificate", certB, seen{resumed: true, serial: serial(certB)}},
	}
	for _, s := range steps {
		current.Store(s.cert)
		// A new connection each time, as agents make between heartbeats.
		c.CloseIdleConnections()
		if _, err := c.Heartbeat(context.Background(), &protocol.HeartbeatRequest{}); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		mu.Lock()
		g := got
		mu.Unlock()
		if g != s.want {
			t.Errorf("%s: server saw %+v, want %+v", s.name, g, s.want)
		}
	}
}

// writeJSON answers as the discovery server does.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError answers with the discovery server's error body.
func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, protocol.ErrorResponse{Error: msg})
}

// freezableHandler answers heartbeats with a short TTL until frozen; then it
// holds every request unanswered, as a SIGSTOPped server does.
type freezableHandler struct {
	ttl, interval int
	frozen        atomic.Bool
	release       chan struct{}
	hits          atomic.Int64
}

func (h *freezableHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.hits.Add(1)
	if h.frozen.Load() {
		select {
		case <-h.release:
		case <-r.Context().Done():
		}
		return
	}
	writeJSON(w, http.StatusOK, protocol.HeartbeatResponse{TTLSeconds: h.ttl, HeartbeatIntervalSeconds: h.interval})
}

// TestClient_FailsOverWithinTTL: a heartbeat stuck on a frozen server must
// reach the other one while the agent is still within its TTL, however
// long the configured request timeout (here the 30 s default against a
// 6 s TTL). The chaos harness saw an agent drop out of http_sd this way.
func TestClient_FailsOverWithinTTL(t *testing.T) {
	const ttl, interval = 6, 1
	for _, tc := range []struct {
		name string
		// fresh makes the stuck heartbeat open a new connection to the
		// frozen server instead of reusing the kept-alive one.
		fresh bool
	}{
		{name: "kept-alive connection", fresh: false},
		{name: "new connection", fresh: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newClientTestCA(t)
			frozen := &freezableHandler{ttl: ttl, interval: interval, release: make(chan struct{})}
			good := &freezableHandler{ttl: ttl, interval: interval, release: make(chan struct{})}
			frozenSrv := startTLS(t, ca, frozen)
			goodSrv := startTLS(t, ca, good)
			t.Cleanup(func() { close(frozen.release); close(good.release) })
			c, err := NewClient(Config{URLs: []string{frozenSrv.URL, goodSrv.URL}, RootCAs: ca.pool})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(c.CloseIdleConnections)

			if _, err := c.Heartbeat(t.Context(), nil); err != nil {
				t.Fatalf("first heartbeat: %v", err)
			}
			if frozen.hits.Load() != 1 || good.hits.Load() != 0 {
				t.Fatalf("hits: first server %d, second %d, want 1 and 0", frozen.hits.Load(), good.hits.Load())
			}
			frozen.frozen.Store(true)
			if tc.fresh {
				c.CloseIdleConnections()
			}
			// The next heartbeat goes out an interval after the last one;
			// it must arrive before the TTL since the last one runs out.
			ctx, cancel := context.WithTimeout(t.Context(), (ttl-interval)*time.Second)
			defer cancel()
			if _, err := c.Heartbeat(ctx, nil); err != nil {
				t.Fatalf("heartbeat with the first server frozen did not reach the second within the TTL: %v", err)
			}
			if good.hits.Load() != 1 {
				t.Errorf("second server hits = %d, want 1", good.hits.Load())
			}
			if c.URL() != goodSrv.URL {
				t.Errorf("URL() = %s, want the server that answered, %s", c.URL(), goodSrv.URL)
			}
		})
	}
}

func TestClient_AttemptTimeout(t *testing.T) {
	for _, tc := range []struct {
		name          string
		timeout       time.Duration
		urls          int
		ttl, interval int
		want          time.Duration
	}{
		{name: "no TTL told yet", timeout: 30 * time.Second, urls: 2, want: 30 * time.Second},
		{name: "older server without TTL", timeout: 30 * time.Second, urls: 2, ttl: 0, interval: 10, want: 30 * time.Second},
		{name: "defaults: the timeout is shorter", timeout: 30 * time.Second, urls: 2, ttl: 300, interval: 75, want: 30 * time.Second},
		{name: "short TTL, two servers", timeout: 30 * time.Second, urls: 2, ttl: 40, interval: 10, want: 15 * time.Second},
		{name: "short TTL, one server", timeout: 30 * time.Second, urls: 1, ttl: 40, interval: 10, want: 30 * time.Second},
		{name: "short TTL, three servers", timeout: 30 * time.Second, urls: 3, ttl: 40, interval: 10, want: 10 * time.Second},
		{name: "TTL not above the interval", timeout: 30 * time.Second, urls: 2, ttl: 10, interval: 10, want: minAttemptTimeout},
		{name: "negative TTL", timeout: 30 * time.Second, urls: 2, ttl: -40, interval: 10, want: 30 * time.Second},
		{name: "negative interval", timeout: 30 * time.Second, urls: 2, ttl: 40, interval: -10, want: 30 * time.Second},
		// Without a cap, MaxInt seconds overflowed into a 1 s bound.
		{name: "TTL that would overflow", timeout: 30 * time.Second, urls: 2, ttl: math.MaxInt, interval: 10, want: 30 * time.Second},
		{name: "interval that would overflow", timeout: 30 * time.Second, urls: 2, ttl: 40, interval: math.MaxInt, want: minAttemptTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			urls := make([]string, tc.urls)
			for i := range urls {
				urls[i] = fmt.Sprintf("https://sd-%d.example.com", i)
			}
			c, err := NewClient(Config{URLs: urls, Timeout: tc.timeout})
			if err != nil {
				t.Fatal(err)
			}
			c.Observe(tc.ttl, tc.interval)
			if got := c.attemptTimeout(); got != tc.want {
				t.Errorf("attemptTimeout() = %s, want %s", got, tc.want)
			}
		})
	}
}
