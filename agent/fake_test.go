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
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	certauth "github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/internal/testca"
)

// testCA signs the fake server's certificate, the agents' certificates and
// the scraper's client certificate.
type testCA struct {
	ca   *testca.CA
	cert *x509.Certificate
	pem  []byte
	pool *x509.CertPool
}

func newTestCA(t testing.TB) *testCA {
	t.Helper()
	ca := testca.New(t, "agent test CA "+rand.Text())
	return &testCA{ca: ca, cert: ca.Cert, pem: ca.PEM(), pool: ca.Pool()}
}

// roleLeaf describes a certificate of role for cn on this host, for both ends
// of TLS, as the discovery server issues agent certificates.
func roleLeaf(cn string, role certauth.Role) testca.Leaf {
	return testca.Leaf{
		CommonName:         cn,
		OrganizationalUnit: []string{certauth.RoleOU(role)},
		DNSNames:           []string{"localhost"},
		IPAddresses:        []net.IP{net.IPv4(127, 0, 0, 1)},
		Usage:              testca.ServerAuth | testca.ClientAuth,
	}
}

// sign certifies pub for cn, valid from notBefore to notAfter.
func (c *testCA) sign(t testing.TB, cn string, pub any, notBefore, notAfter time.Time) (*x509.Certificate, []byte) {
	return c.signRole(t, cn, certauth.RoleAgent, pub, notBefore, notAfter)
}

// signRole reports a failure with Errorf, not Fatal: the fake server
// signs on its handlers' goroutines.
func (c *testCA) signRole(t testing.TB, cn string, role certauth.Role, pub any, notBefore, notAfter time.Time) (*x509.Certificate, []byte) {
	l := roleLeaf(cn, role)
	l.PublicKey, l.NotBefore, l.NotAfter = pub, notBefore, notAfter
	cert, err := c.ca.Sign(l)
	if err != nil {
		t.Errorf("sign: %v", err)
		return nil, nil
	}
	return cert.Cert, cert.ChainPEM()
}

// tlsCert is a key and certificate for a TLS client or server.
func (c *testCA) tlsCert(t testing.TB, cn string, role certauth.Role) tls.Certificate {
	t.Helper()
	return c.ca.Issue(t, roleLeaf(cn, role)).TLS()
}

// fakeAgent is the fake registry's record of one agent.
type fakeAgent struct {
	serial, prevSerial string
	req                protocol.RegisterRequest
	revoked            bool
}

// fakeServer implements the agent API like the discovery server does, with
// knobs to make it fail in the ways the agent must survive. Every call is
// logged as "<endpoint>:<credential>", for example "register:token".
type fakeServer struct {
	t   *testing.T
	ca  *testCA
	srv *httptest.Server

	certTTL atomic.Int64 // nanoseconds
	// agentTTL and interval are the TTL and heartbeat interval, in
	// seconds, that every reply tells the agent.
	agentTTL, interval atomic.Int64
	down               atomic.Bool // answer 503 to everything
	// refuseExpired refuses expired certificates as if past the grace window.
	refuseExpired atomic.Bool
	// stillValid answers this many requests with an expired certificate as
	// a server whose clock has not reached the expiry yet does.
	stillValid atomic.Int32
	// heldRenewals holds this many renewals over mTLS until the agent's
	// certificate has expired and then refuses them as the discovery
	// server refuses a request whose certificate is no longer valid (401),
	// as when a stalled network delivers a renewal late.
	heldRenewals atomic.Int32
	// legacyHeartbeat decodes heartbeats as a server of 0.1.0 does: a
	// body with fields it does not know is refused with 400.
	legacyHeartbeat atomic.Bool
	// health is the exporter health of the last heartbeat that had one.
	health atomic.Pointer[[]protocol.ExporterHealth]

	mu     sync.Mutex
	agents map[string]*fakeAgent
	tokens map[string]bool
	calls  []string
	nextID int
}

func newFakeServer(t *testing.T, ca *testCA) *fakeServer {
	t.Helper()
	f := &fakeServer{t: t, ca: ca, agents: map[string]*fakeAgent{}, tokens: map[string]bool{}}
	f.certTTL.Store(int64(time.Hour))
	f.agentTTL.Store(300)
	f.interval.Store(1)
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+protocol.PathRegister, f.register)
	mux.HandleFunc("POST "+protocol.PathRenew, f.renew)
	mux.HandleFunc("POST "+protocol.PathHeartbeat, f.heartbeat)
	mux.HandleFunc("DELETE "+protocol.PathSelf, f.deregister)
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if f.down.Load() {
			writeTestJSON(w, http.StatusServiceUnavailable, protocol.ErrorResponse{Error: "down for the test"})
			return
		}
		mux.ServeHTTP(w, r)
	}))
	ca.startServer(t, f.srv, "server")
	return f
}

// startServer starts srv with a server-role certificate named cn, asking
// for (not requiring) a client certificate from this CA, as the discovery
// server does, and closes it when the test ends.
func (c *testCA) startServer(t testing.TB, srv *httptest.Server, cn string) {
	t.Helper()
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{c.tlsCert(t, cn, certauth.RoleServer)},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    c.pool,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
}

func writeTestJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, msg string) {
	writeTestJSON(w, status, protocol.ErrorResponse{Error: msg})
}

func (f *fakeServer) record(call string) {
	f.mu.Lock()
	f.calls = append(f.calls, call)
	f.mu.Unlock()
}

// count returns how often call was made.
func (f *fakeServer) count(call string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == call {
			n++
		}
	}
	return n
}

func (f *fakeServer) callLog() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return strings.Join(f.calls, " ")
}

func (f *fakeServer) addToken(tok string) {
	f.mu.Lock()
	f.tokens[tok] = true
	f.mu.Unlock()
}

// agentIDs lists the registered agents.
func (f *fakeServer) agentIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var ids []string
	for id := range f.agents {
		ids = append(ids, id)
	}
	return ids
}

func (f *fakeServer) agent(id string) (fakeAgent, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.agents[id]
	if !ok {
		return fakeAgent{}, false
	}
	return *a, true
}

func (f *fakeServer) revoke(id string) {
	f.mu.Lock()
	f.agents[id].revoked = true
	f.mu.Unlock()
}

func (f *fakeServer) forget(id string) {
	f.mu.Lock()
	delete(f.agents, id)
	f.mu.Unlock()
}

// mtlsIdentity is the agent id of a verified client certificate.
func mtlsIdentity(r *http.Request) (id, serial string, ok bool) {
	if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
		return "", "", false
	}
	leaf := r.TLS.VerifiedChains[0][0]
	return leaf.Subject.CommonName, leaf.SerialNumber.Text(16), true
}

// expiredIdentity checks an expired certificate from a request body and that
// the CSR is signed by the same key.
func (f *fakeServer) expiredIdentity(certPEM string, csr *x509.CertificateRequest) (string, string, error) {
	if f.refuseExpired.Load() {
		return "", "", fmt.Errorf("certificate expired more than 720h0m0s ago: enroll again with a new token")
	}
	chain, err := parseChain([]byte(certPEM))
	if err != nil {
		return "", "", err
	}
	leaf := chain[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: f.ca.pool, CurrentTime: leaf.NotBefore.Add(time.Second),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return "", "", err
	}
	if time.Now().Before(leaf.NotAfter) {
		return "", "", fmt.Errorf("certificate is still valid")
	}
	if !leaf.PublicKey.(*ecdsa.PublicKey).Equal(csr.PublicKey) {
		return "", "", fmt.Errorf("key mismatch")
	}
	return leaf.Subject.CommonName, leaf.SerialNumber.Text(16), nil
}

// clockBehind answers as the discovery server does when its clock says an
// expired certificate is still valid, while stillValid lasts.
func (f *fakeServer) clockBehind(w http.ResponseWriter) bool {
	if f.stillValid.Add(-1) < 0 {
		f.stillValid.Store(0)
		return false
	}
	fail(w, http.StatusBadRequest, "certificate is still valid: renew over mTLS")
	return true
}

func parseCSR(s string) (*x509.CertificateRequest, error) {
	block, _ := pem.Decode([]byte(s))
	if block == nil {
		return nil, fmt.Errorf("no PEM")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	return csr, csr.CheckSignature()
}

// issue signs a certificate for id and records it.
func (f *fakeServer) issue(w http.ResponseWriter, id string, csr *x509.CertificateRequest, req *protocol.RegisterRequest, renew bool) {
	now := time.Now()
	ttl := time.Duration(f.certTTL.Load())
	leaf, chain := f.ca.sign(f.t, id, csr.PublicKey, now.Add(-time.Second), now.Add(ttl))
	f.mu.Lock()
	a := f.agents[id]
	if a == nil {
		a = &fakeAgent{}
		f.agents[id] = a
	}
	if renew {
		a.prevSerial = a.serial
	} else {
		a.prevSerial = ""
		a.req = *req
	}
	a.serial = leaf.SerialNumber.Text(16)
	a.revoked = false
	f.mu.Unlock()
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	writeTestJSON(w, http.StatusOK, protocol.CertificateResponse{
		AgentID:                  id,
		Certificate:              string(chain),
		CACertificate:            string(f.ca.pem),
		TTLSeconds:               int(f.agentTTL.Load()),
		HeartbeatIntervalSeconds: int(f.interval.Load()),
		RenewAfter:               leaf.NotBefore.Add(life * 2 / 3).UTC(),
	})
}

func (f *fakeServer) register(w http.ResponseWriter, r *http.Request) {
	var req protocol.RegisterRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	csr, err := parseCSR(req.CSR)
	if err != nil {
		fail(w, http.StatusBadRequest, "csr: "+err.Error())
		return
	}
	if req.Hostname == "" || req.Port == 0 {
		fail(w, http.StatusBadRequest, "hostname and port required")
		return
	}
	var id string
	if mid, serial, ok := mtlsIdentity(r); ok {
		f.record("register:mtls")
		f.mu.Lock()
		a := f.agents[mid]
		bad := a != nil && (a.revoked || (a.serial != serial && a.prevSerial != serial))
		f.mu.Unlock()
		if bad {
			fail(w, http.StatusForbidden, "agent is revoked")
			return
		}
		id = mid
	} else if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
		f.record("register:token")
		f.mu.Lock()
		valid := f.tokens[tok]
		f.nextID++
		id = fmt.Sprintf("agent-%d", f.nextID)
		f.mu.Unlock()
		if !valid {
			fail(w, http.StatusUnauthorized, "token refused: unknown token")
			return
		}
	} else {
		f.record("register:expired")
		if f.clockBehind(w) {
			return
		}
		eid, _, err := f.expiredIdentity(req.Certificate, csr)
		if err != nil {
			fail(w, http.StatusUnauthorized, "expired certificate refused: "+err.Error())
			return
		}
		id = eid
	}
	f.issue(w, id, csr, &req, false)
}

func (f *fakeServer) renew(w http.ResponseWriter, r *http.Request) {
	var req protocol.RenewRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		fail(w, http.StatusBadRequest, err.Error())
		return
	}
	csr, err := parseCSR(req.CSR)
	if err != nil {
		fail(w, http.StatusBadRequest, "csr: "+err.Error())
		return
	}
	id, serial, ok := mtlsIdentity(r)
	if ok && f.heldRenewals.Add(-1) >= 0 {
		f.record("renew:held")
		leaf := r.TLS.VerifiedChains[0][0]
		select {
		case <-time.After(time.Until(leaf.NotAfter) + 100*time.Millisecond):
		case <-r.Context().Done():
			return
		}
		fail(w, http.StatusUnauthorized, "a client certificate is required, or the expired certificate in the body")
		return
	}
	if ok {
		f.record("renew:mtls")
	} else {
		f.record("renew:expired")
		if f.clockBehind(w) {
			return
		}
		if id, serial, err = f.expiredIdentity(req.Certificate, csr); err != nil {
			fail(w, http.StatusUnauthorized, "expired certificate refused: "+err.Error())
			return
		}
	}
	if status, msg := f.check(id, serial); status != 0 {
		fail(w, status, msg)
		return
	}
	f.issue(w, id, csr, nil, true)
}

// check applies the registry's view of a certificate.
func (f *fakeServer) check(id, serial string) (int, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a := f.agents[id]
	switch {
	case a == nil:
		return http.StatusNotFound, "agent not registered: register again"
	case a.revoked:
		return http.StatusForbidden, "agent is revoked"
	case serial != a.serial && serial != a.prevSerial:
		return http.StatusForbidden, "certificate is superseded"
	}
	return 0, ""
}

func (f *fakeServer) heartbeat(w http.ResponseWriter, r *http.Request) {
	f.record("heartbeat")
	id, serial, ok := mtlsIdentity(r)
	if !ok {
		fail(w, http.StatusUnauthorized, "an agent client certificate is required")
		return
	}
	if status, msg := f.check(id, serial); status != 0 {
		fail(w, status, msg)
		return
	}
	body, _ := io.ReadAll(io.LimitReader(r.Body, protocol.MaxRequestBody))
	if f.legacyHeartbeat.Load() {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		var old struct {
			Status string `json:"status,omitempty"`
		}
		if err := dec.Decode(&old); err != nil {
			f.record("heartbeat refused")
			fail(w, http.StatusBadRequest, "invalid JSON body: "+err.Error())
			return
		}
	}
	var req protocol.HeartbeatRequest
	if err := json.Unmarshal(body, &req); err == nil && req.Exporters != nil {
		f.health.Store(&req.Exporters)
	}
	writeTestJSON(w, http.StatusOK, protocol.HeartbeatResponse{
		TTLSeconds:               int(f.agentTTL.Load()),
		HeartbeatIntervalSeconds: int(f.interval.Load()),
	})
}

func (f *fakeServer) deregister(w http.ResponseWriter, r *http.Request) {
	f.record("deregister")
	id, serial, ok := mtlsIdentity(r)
	if !ok {
		fail(w, http.StatusUnauthorized, "an agent client certificate is required")
		return
	}
	if status, msg := f.check(id, serial); status != 0 {
		fail(w, status, msg)
		return
	}
	f.forget(id)
	w.WriteHeader(http.StatusNoContent)
}
