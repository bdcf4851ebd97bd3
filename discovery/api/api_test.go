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

package api

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd/httpsdtest"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
	"github.com/baremetal-sd/baremetal_sd/internal/syncbuf"
)

// apiHarness runs the API on a real TLS listener with a CA, tokens and a
// memory store, like the server does.
type apiHarness struct {
	t       *testing.T
	ca      *ca.Authority
	key     []byte
	tokens  *ca.Tokens
	reg     *registry.Registry
	store   store.Store
	metrics *collector.Server
	// consumers is the API's http_sd consumer log.
	consumers *httpsd.ConsumerLog
	srv       *httptest.Server
	logs      *syncbuf.Buffer
}

// newAPIHarness serves the API over TLS on the memory store, with a CA and
// token key of its own.
func newAPIHarness(t *testing.T) *apiHarness {
	t.Helper()
	return newReplicaHarness(t, t.TempDir(), memory.New())
}

// client returns an HTTPS client trusting the CA, presenting cert if given.
func (h *apiHarness) client(cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: h.ca.Pool()}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
}

func (h *apiHarness) token(spec ca.TokenSpec) string {
	h.t.Helper()
	if spec.Scope == "" {
		spec.Scope = ca.ScopeEnroll
	}
	if spec.TTL == 0 {
		spec.TTL = time.Hour
	}
	tok, err := h.tokens.Create(spec, time.Now())
	if err != nil {
		h.t.Fatal(err)
	}
	return tok
}

type reply struct {
	status int
	body   []byte
	header http.Header
}

func (h *apiHarness) do(c *http.Client, method, path, token string, body []byte) reply {
	h.t.Helper()
	req, err := http.NewRequest(method, h.srv.URL+path, bytes.NewReader(body))
	if err != nil {
		h.t.Fatal(err)
	}
	if body == nil {
		req.Body = http.NoBody
		req.ContentLength = 0
	} else {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return reply{resp.StatusCode, b, resp.Header}
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func csrPEM(t *testing.T, key crypto.Signer, dnsNames ...string) string {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "agent"}, DNSNames: dnsNames,
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

func registerBody(t *testing.T, mutate func(*protocol.RegisterRequest)) []byte {
	t.Helper()
	req := protocol.RegisterRequest{
		Hostname:  "host1.example.com",
		Address:   "127.0.0.1",
		Port:      9956,
		Labels:    map[string]string{"role": "web"},
		Exporters: []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
		CSR:       csrPEM(t, newKey(t)),
	}
	if mutate != nil {
		mutate(&req)
	}
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// enroll registers an agent and returns its TLS client certificate.
func (h *apiHarness) enroll(spec ca.TokenSpec, mutate func(*protocol.RegisterRequest)) (*protocol.CertificateResponse, tls.Certificate) {
	h.t.Helper()
	key := newKey(h.t)
	body := registerBody(h.t, func(r *protocol.RegisterRequest) {
		r.CSR = csrPEM(h.t, key)
		if mutate != nil {
			mutate(r)
		}
	})
	rep := h.do(h.client(nil), "POST", protocol.PathRegister, h.token(spec), body)
	if rep.status != http.StatusOK {
		h.t.Fatalf("register: %d %s", rep.status, rep.body)
	}
	var resp protocol.CertificateResponse
	if err := json.Unmarshal(rep.body, &resp); err != nil {
		h.t.Fatal(err)
	}
	return &resp, tlsCert(h.t, resp.Certificate, key)
}

func tlsCert(t *testing.T, chainPEM string, key *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair([]byte(chainPEM), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (h *apiHarness) clientCert(role ca.Role) tls.Certificate {
	h.t.Helper()
	certPEM, keyPEM, err := h.ca.IssueClient("prometheus", role, time.Hour)
	if err != nil {
		h.t.Fatal(err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		h.t.Fatal(err)
	}
	return c
}

func TestAPI_EnrollHeartbeatRenewDeregister(t *testing.T) {
	h := newAPIHarness(t)
	resp, cert := h.enroll(ca.TokenSpec{}, nil)
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := leaf.DNSNames; len(got) != 1 || got[0] != "host1.example.com" {
		t.Errorf("certificate DNS SANs %v, want [host1.example.com]", got)
	}
	if resp.HeartbeatIntervalSeconds != 15 || resp.TTLSeconds != 60 {
		t.Errorf("intervals %d/%d, want 15/60", resp.HeartbeatIntervalSeconds, resp.TTLSeconds)
	}
	if !resp.RenewAfter.After(leaf.NotBefore) || !resp.RenewAfter.Before(leaf.NotAfter) {
		t.Errorf("renew_after %v outside the certificate lifetime", resp.RenewAfter)
	}

	agentClient := h.client(&cert)
	if rep := h.do(agentClient, "POST", protocol.PathHeartbeat, "", []byte(`{"status":"ok"}`)); rep.status != http.StatusOK {
		t.Fatalf("heartbeat: %d %s", rep.status, rep.body)
	}

	// Renew with a new key; the old certificate keeps working until it expires.
	newK := newKey(t)
	body, _ := json.Marshal(protocol.RenewRequest{CSR: csrPEM(t, newK)})
	rep := h.do(agentClient, "POST", protocol.PathRenew, "", body)
	if rep.status != http.StatusOK {
		t.Fatalf("renew: %d %s", rep.status, rep.body)
	}
	var renewed protocol.CertificateResponse
	_ = json.Unmarshal(rep.body, &renewed)
	if renewed.AgentID != resp.AgentID {
		t.Fatalf("renew changed the agent id: %s -> %s", resp.AgentID, renewed.AgentID)
	}
	newCert := tlsCert(t, renewed.Certificate, newK)
	if rep := h.do(h.client(&newCert), "POST", protocol.PathHeartbeat, "", nil); rep.status != http.StatusOK {
		t.Fatalf("heartbeat with renewed certificate: %d %s", rep.status, rep.body)
	}
	if rep := h.do(h.client(&cert), "POST", protocol.PathHeartbeat, "", nil); rep.status != http.StatusOK {
		t.Fatalf("heartbeat with previous certificate: %d %s", rep.status, rep.body)
	}

	if rep := h.do(h.client(&newCert), "DELETE", protocol.PathSelf, "", nil); rep.status != http.StatusNoContent {
		t.Fatalf("deregister: %d %s", rep.status, rep.body)
	}
	if rep := h.do(h.client(&newCert), "POST", protocol.PathHeartbeat, "", nil); rep.status != http.StatusNotFound {
		t.Fatalf("heartbeat after deregister: %d, want 404", rep.status)
	}
	// 404 means "register again": the still valid certificate is enough.
	rep = h.do(h.client(&newCert), "POST", protocol.PathRegister, "", registerBody(t, func(r *protocol.RegisterRequest) { r.CSR = csrPEM(t, newK) }))
	if rep.status != http.StatusOK {
		t.Fatalf("re-register by certificate: %d %s", rep.status, rep.body)
	}
}

func TestAPI_RegisterRefusesBadTokens(t *testing.T) {
	h := newAPIHarness(t)
	now := time.Now()
	sign := func(method jwt.SigningMethod, key any, claims jwt.MapClaims) string {
		tok, err := jwt.NewWithClaims(method, claims).SignedString(key)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	good := func() jwt.MapClaims {
		return jwt.MapClaims{"iss": "baremetal_sd", "aud": "baremetal_sd", "exp": now.Add(time.Hour).Unix(),
			"iat": now.Unix(), "jti": "j1", "scope": "enroll"}
	}
	valid := h.token(ca.TokenSpec{})
	parts := strings.Split(valid, ".")
	noneHeader := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	single := h.token(ca.TokenSpec{SingleUse: true})
	if rep := h.do(h.client(nil), "POST", protocol.PathRegister, single, registerBody(t, nil)); rep.status != http.StatusOK {
		t.Fatalf("first use of a single-use token: %d %s", rep.status, rep.body)
	}

	tests := []struct {
		name   string
		token  string
		status int
		reason string
	}{
		{"no token", "", 401, "missing"},
		{"garbage", "not-a-jwt", 401, "malformed"},
		{"alg none", noneHeader + "." + parts[1] + ".", 401, "algorithm"},
		{"HS512", sign(jwt.SigningMethodHS512, h.key, good()), 401, "algorithm"},
		{"RS256", sign(jwt.SigningMethodRS256, rsaKey, good()), 401, "algorithm"},
		{"tampered signature", parts[0] + "." + parts[1] + "." + flip(parts[2]), 401, "signature"},
		{"tampered claims", parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"scope":"enroll","exp":9999999999}`)) + "." + parts[2], 401, "signature"},
		{"expired", h.tokenAt(ca.TokenSpec{Scope: ca.ScopeEnroll, TTL: time.Minute}, now.Add(-time.Hour)), 401, "expired"},
		{"wrong audience", sign(jwt.SigningMethodHS256, h.key, with2(good(), "aud", "other")), 401, "audience"},
		{"wrong issuer", sign(jwt.SigningMethodHS256, h.key, with2(good(), "iss", "other")), 401, "issuer"},
		{"wrong scope", h.token(ca.TokenSpec{Scope: ca.ScopeDiscovery}), 403, "scope"},
		{"reused single-use", single, 401, "reused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(h.reg.List())
			rejected := testutil.ToFloat64(h.metrics.TokenRejections.WithLabelValues(tt.reason))
			rep := h.do(h.client(nil), "POST", protocol.PathRegister, tt.token, registerBody(t, nil))
			if rep.status != tt.status {
				t.Fatalf("status %d (%s), want %d", rep.status, rep.body, tt.status)
			}
			var e protocol.ErrorResponse
			if err := json.Unmarshal(rep.body, &e); err != nil || e.Error == "" {
				t.Fatalf("error body %q is not a JSON error", rep.body)
			}
			if wa := rep.header.Get("WWW-Authenticate"); (rep.status == http.StatusUnauthorized) != strings.HasPrefix(wa, "Bearer") {
				t.Errorf("status %d with WWW-Authenticate %q", rep.status, wa)
			}
			if tt.token != "" && strings.Contains(string(rep.body), tt.token) {
				t.Fatal("reply carries the token")
			}
			if got := testutil.ToFloat64(h.metrics.TokenRejections.WithLabelValues(tt.reason)); got != rejected+1 {
				t.Errorf("rejections{reason=%q} went from %v to %v", tt.reason, rejected, got)
			}
			if after := len(h.reg.List()); after != before {
				t.Fatalf("refused request stored an agent (%d -> %d)", before, after)
			}
			// Refusals are not store failures: the store stays up.
			if up := testutil.ToFloat64(h.metrics.StoreUp); up != 1 {
				t.Errorf("baremetal_sd_store_up = %v after a refused token, want 1", up)
			}
			if n := testutil.CollectAndCount(h.metrics.StoreErrors); n != 0 {
				t.Errorf("store errors counted for a refused token: %d series", n)
			}
		})
	}
	for _, secret := range []string{valid, single, base64.StdEncoding.EncodeToString(h.key), string(h.key)} {
		if strings.Contains(h.logs.String(), secret) {
			t.Fatal("a log line carries a token or the token key")
		}
	}
}

func (h *apiHarness) tokenAt(spec ca.TokenSpec, at time.Time) string {
	h.t.Helper()
	tok, err := h.tokens.Create(spec, at)
	if err != nil {
		h.t.Fatal(err)
	}
	return tok
}

func with2(m jwt.MapClaims, k string, v any) jwt.MapClaims {
	m[k] = v
	return m
}

// flip changes the first character of a base64url string.
func flip(s string) string {
	c := byte('A')
	if s[0] == 'A' {
		c = 'B'
	}
	return string(c) + s[1:]
}

func TestAPI_RegisterRefusesBadInput(t *testing.T) {
	h := newAPIHarness(t)
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	badSig := func() string {
		blk, _ := pem.Decode([]byte(csrPEM(t, newKey(t))))
		blk.Bytes[len(blk.Bytes)-3] ^= 0xff
		return string(pem.EncodeToMemory(blk))
	}()
	tests := []struct {
		name   string
		mutate func(*protocol.RegisterRequest)
		raw    []byte
		status int
	}{
		{"label name with dash", func(r *protocol.RegisterRequest) { r.Labels = map[string]string{"bad-name": "x"} }, nil, 400},
		{"label name reserved", func(r *protocol.RegisterRequest) { r.Labels = map[string]string{"__name__": "x"} }, nil, 400},
		{"label name leading digit", func(r *protocol.RegisterRequest) { r.Labels = map[string]string{"1a": "x"} }, nil, 400},
		{"label value too long", func(r *protocol.RegisterRequest) {
			r.Labels = map[string]string{"a": strings.Repeat("x", protocol.MaxLabelValueLen+1)}
		}, nil, 400},
		{"hostname with space", func(r *protocol.RegisterRequest) { r.Hostname = "host one" }, nil, 400},
		{"hostname with slash", func(r *protocol.RegisterRequest) { r.Hostname = "a/b" }, nil, 400},
		{"hostname empty", func(r *protocol.RegisterRequest) { r.Hostname = "" }, nil, 400},
		{"hostname too long", func(r *protocol.RegisterRequest) { r.Hostname = strings.Repeat("a.", 130) + "com" }, nil, 400},
		{"hostname leading dash", func(r *protocol.RegisterRequest) { r.Hostname = "-host" }, nil, 400},
		{"address garbage", func(r *protocol.RegisterRequest) { r.Address = "http://x" }, nil, 400},
		// An agent certificate for the server's name could pose as the
		// tunnel proxy to Prometheus.
		{"hostname of the server", func(r *protocol.RegisterRequest) { r.Hostname = "SD.example.org" }, nil, 400},
		{"address of the server", func(r *protocol.RegisterRequest) { r.Address = "192.0.2.53" }, nil, 400},
		{"port zero", func(r *protocol.RegisterRequest) { r.Port = 0 }, nil, 400},
		{"port too large", func(r *protocol.RegisterRequest) { r.Port = 65536 }, nil, 400},
		{"exporter name reserved", func(r *protocol.RegisterRequest) { r.Exporters = []protocol.Exporter{{Name: "agent", Path: "/x"}} }, nil, 400},
		{"exporter path relative", func(r *protocol.RegisterRequest) { r.Exporters = []protocol.Exporter{{Name: "node", Path: "metrics"}} }, nil, 400},
		{"csr garbage", func(r *protocol.RegisterRequest) { r.CSR = "garbage" }, nil, 400},
		{"csr bad signature", func(r *protocol.RegisterRequest) { r.CSR = badSig }, nil, 400},
		{"csr weak key", func(r *protocol.RegisterRequest) { r.CSR = csrPEM(t, weak) }, nil, 400},
		{"unknown field", nil, []byte(`{"hostname":"h","port":1,"csr":"x","evil":true}`), 400},
		{"not json", nil, []byte(`hello`), 400},
		{"body over 1 MiB", nil, append([]byte(`{"hostname":"`), bytes.Repeat([]byte("a"), protocol.MaxRequestBody+1)...), 413},
	}
	tok := h.token(ca.TokenSpec{})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			body := tt.raw
			if body == nil {
				body = registerBody(t, tt.mutate)
			}
			rep := h.do(h.client(nil), "POST", protocol.PathRegister, tok, body)
			if rep.status != tt.status {
				t.Fatalf("status %d (%s), want %d", rep.status, rep.body, tt.status)
			}
			var e protocol.ErrorResponse
			if err := json.Unmarshal(rep.body, &e); err != nil || e.Error == "" {
				t.Fatalf("error body %q is not a JSON error", rep.body)
			}
			if n := len(h.reg.List()); n != 0 {
				t.Fatalf("refused registration stored (%d agents)", n)
			}
		})
	}
}

func TestAPI_RefusesWrongCertificates(t *testing.T) {
	h := newAPIHarness(t)
	resp, agentCert := h.enroll(ca.TokenSpec{}, nil)
	_, otherAgent := h.enroll(ca.TokenSpec{}, func(r *protocol.RegisterRequest) { r.Hostname = "host2.example.com" })
	discoveryCert := h.clientCert(ca.RoleDiscovery)
	adminCert := h.clientCert(ca.RoleAdmin)

	// Revoke the other agent.
	if rep := h.do(h.client(&adminCert), "DELETE", protocol.PathAgents+"/"+agentID(t, otherAgent), "", nil); rep.status != http.StatusOK {
		t.Fatalf("revoke: %d %s", rep.status, rep.body)
	}
	// A new enrollment for the same id supersedes the first certificate.
	fixed, _ := h.enroll(ca.TokenSpec{AgentID: "fixed-1"}, func(r *protocol.RegisterRequest) { r.Hostname = "host3.example.com" })
	_, fixedAgain := h.enroll(ca.TokenSpec{AgentID: "fixed-1"}, func(r *protocol.RegisterRequest) { r.Hostname = "host3.example.com" })
	_ = fixed
	_, superseded := func() (*protocol.CertificateResponse, tls.Certificate) {
		return h.enroll(ca.TokenSpec{AgentID: "fixed-2"}, nil)
	}()
	h.enroll(ca.TokenSpec{AgentID: "fixed-2"}, nil)

	tests := []struct {
		name   string
		cert   tls.Certificate
		method string
		path   string
		status int
		reason string // of baremetal_sd_auth_certificate_rejections_total
		// hostname of a registration; the certificate's own unless set
		hostname string
	}{
		{"client certificate heartbeats", discoveryCert, "POST", protocol.PathHeartbeat, 403, "not_agent", ""},
		{"admin certificate heartbeats", adminCert, "POST", protocol.PathHeartbeat, 403, "not_agent", ""},
		{"client certificate registers as an agent", discoveryCert, "POST", protocol.PathRegister, 403, "not_agent", ""},
		{"admin certificate registers as an agent", adminCert, "POST", protocol.PathRegister, 403, "not_agent", ""},
		{"agent certificate reads http_sd", agentCert, "GET", protocol.PathDiscovery, 403, "wrong_role", ""},
		{"agent certificate lists agents", agentCert, "GET", protocol.PathAgents, 403, "wrong_role", ""},
		{"agent certificate revokes another agent", agentCert, "DELETE", protocol.PathAgents + "/" + resp.AgentID, 403, "wrong_role", ""},
		{"discovery certificate revokes", discoveryCert, "DELETE", protocol.PathAgents + "/" + resp.AgentID, 403, "wrong_role", ""},
		{"revoked agent heartbeats", otherAgent, "POST", protocol.PathHeartbeat, 403, "revoked", ""},
		{"revoked agent renews", otherAgent, "POST", protocol.PathRenew, 403, "revoked", ""},
		{"revoked agent registers again", otherAgent, "POST", protocol.PathRegister, 403, "revoked", "host2.example.com"},
		{"agent certificate registers another hostname", agentCert, "POST", protocol.PathRegister, 403, "hostname_mismatch", "intruder.example.com"},
		{"superseded certificate heartbeats", superseded, "POST", protocol.PathHeartbeat, 403, "superseded", ""},
		{"superseded certificate registers again", superseded, "POST", protocol.PathRegister, 403, "superseded", "host1.example.com"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body []byte
			switch tt.path {
			case protocol.PathRenew:
				body, _ = json.Marshal(protocol.RenewRequest{CSR: csrPEM(t, newKey(t))})
			case protocol.PathRegister:
				body = registerBody(t, func(r *protocol.RegisterRequest) {
					if tt.hostname != "" {
						r.Hostname = tt.hostname
					}
				})
			}
			before := h.reg.List()
			rejected := testutil.ToFloat64(h.metrics.CertRejections.WithLabelValues(tt.reason))
			rep := h.do(h.client(&tt.cert), tt.method, tt.path, "", body)
			if rep.status != tt.status {
				t.Fatalf("status %d (%s), want %d", rep.status, rep.body, tt.status)
			}
			var e protocol.ErrorResponse
			if err := json.Unmarshal(rep.body, &e); err != nil || e.Error == "" {
				t.Fatalf("error body %q is not a JSON error", rep.body)
			}
			if got := testutil.ToFloat64(h.metrics.CertRejections.WithLabelValues(tt.reason)); got != rejected+1 {
				t.Errorf("certificate rejections{reason=%q} went from %v to %v", tt.reason, rejected, got)
			}
			// Nothing stored or changed: the same agents, the same
			// certificates, no new hostname.
			after := h.reg.List()
			if len(after) != len(before) {
				t.Fatalf("refused request changed the registry: %d -> %d agents", len(before), len(after))
			}
			for i := range after {
				if after[i].ID != before[i].ID || after[i].CertSerial != before[i].CertSerial ||
					after[i].Hostname != before[i].Hostname || after[i].Revoked() != before[i].Revoked() {
					t.Fatalf("refused request changed agent %s: %+v -> %+v", before[i].ID, before[i].Agent, after[i].Agent)
				}
			}
		})
	}
	if rep := h.do(h.client(&fixedAgain), "POST", protocol.PathHeartbeat, "", nil); rep.status != http.StatusOK {
		t.Fatalf("current certificate of re-enrolled agent: %d %s", rep.status, rep.body)
	}
	if rep := h.do(h.client(&discoveryCert), "GET", protocol.PathDiscovery, "", nil); rep.status != http.StatusOK {
		t.Fatalf("discovery certificate reads http_sd: %d %s", rep.status, rep.body)
	}
	groups := httpsdtest.DecodeGroups(t, h.do(h.client(&discoveryCert), "GET", protocol.PathDiscovery, "", nil).body)
	for _, g := range groups {
		if g.Labels[protocol.MetaAgentID] == agentID(t, otherAgent) {
			t.Fatal("revoked agent still in http_sd")
		}
	}
	if rep := h.do(h.client(nil), "GET", protocol.PathDiscovery, h.token(ca.TokenSpec{Scope: ca.ScopeDiscovery}), nil); rep.status != http.StatusOK {
		t.Fatalf("discovery token reads http_sd: %d %s", rep.status, rep.body)
	}
	if rep := h.do(h.client(nil), "GET", protocol.PathDiscovery, "", nil); rep.status != http.StatusUnauthorized {
		t.Fatalf("anonymous http_sd: %d, want 401", rep.status)
	}
}

func agentID(t *testing.T, c tls.Certificate) string {
	t.Helper()
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf.Subject.CommonName
}

func TestAPI_DiscoveryContentTypeAndGzip(t *testing.T) {
	h := newAPIHarness(t)
	h.enroll(ca.TokenSpec{}, nil)
	cert := h.clientCert(ca.RoleDiscovery)
	c := h.client(&cert)
	c.Transport.(*http.Transport).DisableCompression = true
	for _, gz := range []bool{false, true} {
		req, _ := http.NewRequest("GET", h.srv.URL+protocol.PathDiscovery, nil)
		if gz {
			req.Header.Set("Accept-Encoding", "gzip")
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("Content-Type %q", ct)
		}
		if gz {
			if resp.Header.Get("Content-Encoding") != "gzip" {
				t.Fatal("gzip not used although accepted")
			}
			body = httpsdtest.Gunzip(t, body)
		}
		if n := len(httpsdtest.DecodeGroups(t, body)); n != 2 {
			t.Fatalf("gzip=%v: %d groups, want 2", gz, n)
		}
	}
}

func TestAPI_AdminMaintenance(t *testing.T) {
	h := newAPIHarness(t)
	resp, _ := h.enroll(ca.TokenSpec{}, nil)
	adminTok := h.token(ca.TokenSpec{Scope: ca.ScopeAdmin})
	rep := h.do(h.client(nil), "POST", fmt.Sprintf("%s/%s/maintenance", protocol.PathAgents, resp.AgentID), adminTok, []byte(`{"maintenance":true}`))
	if rep.status != http.StatusOK {
		t.Fatalf("maintenance: %d %s", rep.status, rep.body)
	}
	if v, _ := h.reg.Get(resp.AgentID); !v.Maintenance {
		t.Fatal("maintenance not set")
	}
	rep = h.do(h.client(nil), "GET", protocol.PathAgents, adminTok, nil)
	var agents []discovery.AgentView
	if err := json.Unmarshal(rep.body, &agents); err != nil || len(agents) != 1 || agents[0].State != discovery.StateMaintenance {
		t.Fatalf("list: %v %s", err, rep.body)
	}
	if rep := h.do(h.client(nil), "GET", protocol.PathAgents, h.token(ca.TokenSpec{Scope: ca.ScopeDiscovery}), nil); rep.status != http.StatusForbidden {
		t.Fatalf("discovery token lists agents: %d, want 403", rep.status)
	}
	if rep := h.do(h.client(nil), "POST", protocol.PathAgents+"/nope/maintenance", adminTok, []byte(`{"maintenance":true}`)); rep.status != http.StatusNotFound {
		t.Fatalf("unknown agent: %d, want 404", rep.status)
	}
}

func TestAPI_TokenLabelConstraints(t *testing.T) {
	h := newAPIHarness(t)
	tok := h.token(ca.TokenSpec{Labels: map[string]string{"role": "db"}})
	rep := h.do(h.client(nil), "POST", protocol.PathRegister, tok, registerBody(t, nil)) // asks role=web
	if rep.status != http.StatusForbidden {
		t.Fatalf("conflicting label: %d %s, want 403", rep.status, rep.body)
	}
	rep = h.do(h.client(nil), "POST", protocol.PathRegister, tok, registerBody(t, func(r *protocol.RegisterRequest) { r.Labels = nil }))
	if rep.status != http.StatusOK {
		t.Fatalf("register: %d %s", rep.status, rep.body)
	}
	var resp protocol.CertificateResponse
	_ = json.Unmarshal(rep.body, &resp)
	if v, _ := h.reg.Get(resp.AgentID); v.Labels.Get("role") != "db" {
		t.Fatalf("token label not applied: %v", v.Labels)
	}
}

// TestAPI_ReregisterByCertificateKeepsEnrollment: an agent's own certificate
// lets it register again (after the registry lost it, or with new exporters),
// but not as another host or outside the labels its token pinned.
func TestAPI_ReregisterByCertificateKeepsEnrollment(t *testing.T) {
	h := newAPIHarness(t)
	_, cert := h.enroll(ca.TokenSpec{Labels: map[string]string{"role": "db"}}, func(r *protocol.RegisterRequest) {
		r.Labels = map[string]string{"rack": "r1"}
	})
	id := agentID(t, cert)
	tests := []struct {
		name   string
		mutate func(*protocol.RegisterRequest)
		status int
		errMsg string
	}{
		{"other hostname", func(r *protocol.RegisterRequest) { r.Hostname = "victim.example.com"; r.Labels = nil }, http.StatusForbidden, "differs from the certificate"},
		{"other value of a pinned label", func(r *protocol.RegisterRequest) { r.Labels = map[string]string{"role": "web"} }, http.StatusForbidden, "must be"},
		{"pinned label left out", func(r *protocol.RegisterRequest) { r.Labels = map[string]string{"rack": "r2"} }, http.StatusOK, ""},
		{"new exporter, same labels", func(r *protocol.RegisterRequest) {
			r.Labels = map[string]string{"role": "db", "rack": "r3"}
			r.Exporters = append(r.Exporters, protocol.Exporter{Name: "mysqld", Path: "/exporters/mysqld/metrics"})
		}, http.StatusOK, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := newKey(t)
			body := registerBody(t, func(r *protocol.RegisterRequest) {
				r.CSR = csrPEM(t, key)
				tc.mutate(r)
			})
			rep := h.do(h.client(&cert), "POST", protocol.PathRegister, "", body)
			if rep.status != tc.status {
				t.Fatalf("status %d (%s), want %d", rep.status, rep.body, tc.status)
			}
			if !strings.Contains(string(rep.body), tc.errMsg) {
				t.Fatalf("reply %s lacks %q", rep.body, tc.errMsg)
			}
			if rep.status == http.StatusOK {
				var resp protocol.CertificateResponse
				if err := json.Unmarshal(rep.body, &resp); err != nil {
					t.Fatal(err)
				}
				cert = tlsCert(t, resp.Certificate, key)
			}
			a, ok := h.reg.Get(id)
			if !ok {
				t.Fatal("agent lost")
			}
			if a.Hostname != "host1.example.com" || a.Labels.Get("role") != "db" || a.PinnedLabels.Get("role") != "db" {
				t.Fatalf("enrollment not kept: hostname %q labels %v pinned %v", a.Hostname, a.Labels, a.PinnedLabels)
			}
		})
	}
}

// TestAPI_UnknownPathsAndMethods: API clients get JSON errors for paths and
// methods the API does not have, not ServeMux's plain text.
func TestAPI_UnknownPathsAndMethods(t *testing.T) {
	h := newAPIHarness(t)
	tests := []struct {
		method, path string
		status       int
		allow        string
	}{
		{"GET", "/api/v1/nope", 404, ""},
		{"GET", "/api/v2/discovery", 404, ""},
		{"GET", protocol.PathRegister, 405, "POST"},
		{"PUT", protocol.PathHeartbeat, 405, "POST"},
		{"POST", protocol.PathDiscovery, 405, "GET, HEAD"},
		{"GET", protocol.PathSelf, 405, "DELETE"},
		{"POST", protocol.PathAgents + "/some-id", 405, "DELETE"},
		{"GET", protocol.PathAgents + "/some-id/maintenance", 405, "POST"},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			rep := h.do(h.client(nil), tt.method, tt.path, "", nil)
			if rep.status != tt.status {
				t.Fatalf("status %d (%s), want %d", rep.status, rep.body, tt.status)
			}
			if ct := rep.header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q, want application/json", ct)
			}
			var e protocol.ErrorResponse
			if err := json.Unmarshal(rep.body, &e); err != nil || e.Error == "" {
				t.Errorf("error body %q is not a JSON error", rep.body)
			}
			if got := rep.header.Get("Allow"); got != tt.allow {
				t.Errorf("Allow %q, want %q", got, tt.allow)
			}
		})
	}
}

// TestWriteJSONList: the streamed array is the JSON array json.Marshal
// makes, for no, one and several elements.
func TestWriteJSONList(t *testing.T) {
	for _, items := range [][]discovery.AgentView{
		nil,
		{{Agent: store.Agent{ID: "a"}, State: discovery.StateHealthy}},
		{{Agent: store.Agent{ID: "a"}}, {Agent: store.Agent{ID: "b", Labels: labels.FromStrings("k", "v\"\n")}}, {Agent: store.Agent{ID: "c"}}},
	} {
		rec := httptest.NewRecorder()
		writeJSONList(rec, items)
		if ct := rec.Header().Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		var got []discovery.AgentView
		if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
			t.Fatalf("%d items: invalid JSON %q: %v", len(items), rec.Body.String(), err)
		}
		if got == nil {
			t.Fatalf("%d items: %q decodes to null, want an array", len(items), rec.Body.String())
		}
		want, _ := json.Marshal(items)
		again, _ := json.Marshal(got)
		if len(items) > 0 && !bytes.Equal(want, again) {
			t.Errorf("%d items:\n got %s\nwant %s", len(items), again, want)
		}
	}
}
