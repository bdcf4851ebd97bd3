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
	"crypto/ecdsa"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// renewGrace is the grace window of the API that renewal tests talk to. It
// is shorter than the 30-day default only to keep the clocks readable.
const renewGrace = 24 * time.Hour

// at serves the harness's registry, store and CA on a second listener whose
// API clock reads now: a host that was off for a day or a month, without the
// test waiting for it. The registry keeps the real clock; renewal only asks
// it whether a serial is still the agent's, which does not depend on time for
// the current certificate.
func (h *apiHarness) at(now time.Time) *apiHarness {
	h.t.Helper()
	api := New(Config{
		Registry: h.reg, Cache: httpsd.NewCache(h.reg, h.metrics), Store: h.store, CA: h.ca, Tokens: h.tokens,
		CertTTL: time.Hour, RenewGrace: renewGrace, Metrics: h.metrics,
		Now: func() time.Time { return now },
	})
	mux := http.NewServeMux()
	api.Routes(mux)
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = h.srv.TLS.Clone()
	srv.StartTLS()
	h.t.Cleanup(srv.Close)
	shifted := *h
	shifted.srv = srv
	return &shifted
}

// enrolledKey enrolls an agent and returns its certificate, whose key is the
// agent's key.
func (h *apiHarness) enrolledKey() (tls.Certificate, *ecdsa.PrivateKey) {
	h.t.Helper()
	_, cert := h.enroll(ca.TokenSpec{}, nil)
	key, ok := cert.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		h.t.Fatalf("agent key is a %T", cert.PrivateKey)
	}
	return cert, key
}

// chainPEM is the PEM chain of a certificate, as an agent keeps it in
// cert.pem and sends it in a renewal.
func chainPEM(t *testing.T, c tls.Certificate) string {
	t.Helper()
	var b strings.Builder
	for _, der := range c.Certificate {
		b.Write(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	return b.String()
}

// TestAPI_RenewExpiredCertificate covers POST /api/v1/renew without mTLS:
// a host that was off for longer than its certificate lived sends the
// expired certificate and a CSR. Only proof of possession of the same key,
// within the grace window, for an agent that is neither revoked nor
// superseded, gets a new certificate; every refusal says why in JSON and is
// counted by reason.
func TestAPI_RenewExpiredCertificate(t *testing.T) {
	h := newAPIHarness(t)
	admin := h.clientCert(ca.RoleAdmin)
	otherCA, _, err := ca.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	// Each case gets its own agent and says what the host sends and when.
	tests := []struct {
		name string
		// prepare may change the registry before the renewal (revoke,
		// renew over mTLS) and returns the request body.
		prepare func(t *testing.T, s expiredHost) protocol.RenewRequest
		// after is the API's clock relative to the certificate's expiry.
		after  time.Duration
		status int
		// reason is the result counted in baremetal_sd_renewals_total and,
		// when rejection is set, in the certificate rejections.
		reason    string
		rejection bool
		msg       string
	}{
		{
			name:    "an hour after expiry, same key",
			prepare: sameKey,
			after:   time.Hour, status: http.StatusOK, reason: "success",
		},
		{
			name:    "at the end of the grace window",
			prepare: sameKey,
			after:   renewGrace, status: http.StatusOK, reason: "success",
		},
		{
			name:    "a second past the grace window",
			prepare: sameKey,
			after:   renewGrace + time.Second, status: http.StatusUnauthorized,
			reason: "grace_expired", rejection: true, msg: "new token",
		},
		{
			name:    "a month past the grace window",
			prepare: sameKey,
			after:   30 * renewGrace, status: http.StatusUnauthorized,
			reason: "grace_expired", rejection: true, msg: "new token",
		},
		{
			name: "CSR signed by another key",
			prepare: func(t *testing.T, s expiredHost) protocol.RenewRequest {
				return protocol.RenewRequest{CSR: csrPEM(t, newKey(t)), Certificate: chainPEM(t, s.cert)}
			},
			after: time.Hour, status: http.StatusForbidden,
			reason: "key_mismatch", rejection: true, msg: "not signed by the certificate's key",
		},
		{
			name: "revoked agent within the grace window",
			prepare: func(t *testing.T, s expiredHost) protocol.RenewRequest {
				revoke(t, h, admin, s.cert)
				return sameKey(t, s)
			},
			after: time.Hour, status: http.StatusForbidden,
			reason: "revoked", rejection: true, msg: "revoked",
		},
		{
			name: "revoked agent past the grace window",
			prepare: func(t *testing.T, s expiredHost) protocol.RenewRequest {
				revoke(t, h, admin, s.cert)
				return sameKey(t, s)
			},
			after: renewGrace + time.Hour, status: http.StatusUnauthorized,
			reason: "grace_expired", rejection: true, msg: "new token",
		},
		{
			name: "superseded by two renewals since",
			prepare: func(t *testing.T, s expiredHost) protocol.RenewRequest {
				c := s.cert
				for range 2 {
					c = renewOverMTLS(t, h, c, s.key)
				}
				return sameKey(t, s)
			},
			after: time.Hour, status: http.StatusForbidden,
			reason: "superseded", rejection: true, msg: "superseded",
		},
		{
			name:    "still valid",
			prepare: sameKey,
			after:   -time.Minute, status: http.StatusBadRequest,
			reason: "not_expired", rejection: true, msg: "renew over mTLS",
		},
		{
			name: "no certificate in the body",
			prepare: func(t *testing.T, s expiredHost) protocol.RenewRequest {
				return protocol.RenewRequest{CSR: csrPEM(t, s.key)}
			},
			after: time.Hour, status: http.StatusUnauthorized,
			reason: "no_certificate", rejection: true, msg: "client certificate is required",
		},
		{
			name: "certificate from another CA",
			prepare: func(t *testing.T, s expiredHost) protocol.RenewRequest {
				_, chain, err := otherCA.SignAgent(ca.AgentCertRequest{
					AgentID: agentID(t, s.cert), Hostname: "host1.example.com", PublicKey: &s.key.PublicKey, TTL: time.Hour,
				})
				if err != nil {
					t.Fatal(err)
				}
				return protocol.RenewRequest{CSR: csrPEM(t, s.key), Certificate: string(chain)}
			},
			after: time.Hour, status: http.StatusUnauthorized,
			reason: "bad_certificate", rejection: true, msg: "not issued to an agent by this CA",
		},
		{
			name: "expired Prometheus certificate",
			prepare: func(t *testing.T, _ expiredHost) protocol.RenewRequest {
				prom := h.clientCert(ca.RoleDiscovery)
				return protocol.RenewRequest{CSR: csrPEM(t, prom.PrivateKey.(*ecdsa.PrivateKey)), Certificate: chainPEM(t, prom)}
			},
			after: time.Hour, status: http.StatusUnauthorized,
			reason: "bad_certificate", rejection: true, msg: "not issued to an agent",
		},
		{
			name: "deregistered agent",
			prepare: func(t *testing.T, s expiredHost) protocol.RenewRequest {
				if rep := h.do(h.client(&s.cert), "DELETE", protocol.PathSelf, "", nil); rep.status != http.StatusNoContent {
					t.Fatalf("deregister: %d %s", rep.status, rep.body)
				}
				return sameKey(t, s)
			},
			// 404 is the agent's cue to register with the expired
			// certificate (TestAPI_RegisterWithExpiredCertificate).
			after: time.Hour, status: http.StatusNotFound, reason: "not_found", msg: "register again",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, key := h.enrolledKey()
			id := agentID(t, cert)
			body := tt.prepare(t, expiredHost{cert: cert, key: key})
			before, _ := h.reg.Get(id)
			renewals := testutil.ToFloat64(h.metrics.Renewals.WithLabelValues(tt.reason))
			rejections := testutil.ToFloat64(h.metrics.CertRejections.WithLabelValues(tt.reason))
			issued := testutil.ToFloat64(h.metrics.CertificatesIssued.WithLabelValues("renew"))

			later := h.at(cert.Leaf.NotAfter.Add(tt.after))
			data, err := json.Marshal(body)
			if err != nil {
				t.Fatal(err)
			}
			// No client certificate: the expired one could not pass the TLS
			// handshake, so it travels in the body.
			rep := later.do(later.client(nil), "POST", protocol.PathRenew, "", data)
			if rep.status != tt.status {
				t.Fatalf("status %d (%s), want %d", rep.status, rep.body, tt.status)
			}
			if got := testutil.ToFloat64(h.metrics.Renewals.WithLabelValues(tt.reason)); got != renewals+1 {
				t.Errorf("renewals{result=%q} went from %v to %v, want +1", tt.reason, renewals, got)
			}
			wantRejections := rejections
			if tt.rejection {
				wantRejections++
			}
			if got := testutil.ToFloat64(h.metrics.CertRejections.WithLabelValues(tt.reason)); got != wantRejections {
				t.Errorf("certificate rejections{reason=%q} = %v, want %v", tt.reason, got, wantRejections)
			}

			if tt.status != http.StatusOK {
				var e protocol.ErrorResponse
				if err := json.Unmarshal(rep.body, &e); err != nil || !strings.Contains(e.Error, tt.msg) {
					t.Fatalf("error body %s (%v), want a JSON error mentioning %q", rep.body, err, tt.msg)
				}
				if wa := rep.header.Get("WWW-Authenticate"); (rep.status == http.StatusUnauthorized) != strings.HasPrefix(wa, "Bearer") {
					t.Errorf("status %d with WWW-Authenticate %q", rep.status, wa)
				}
				if got := testutil.ToFloat64(h.metrics.CertificatesIssued.WithLabelValues("renew")); got != issued {
					t.Errorf("a refused renewal issued a certificate (%v -> %v)", issued, got)
				}
				if after, ok := h.reg.Get(id); ok && after.CertSerial != before.CertSerial {
					t.Errorf("a refused renewal changed the agent's certificate from %s to %s", before.CertSerial, after.CertSerial)
				}
				return
			}

			var resp protocol.CertificateResponse
			if err := json.Unmarshal(rep.body, &resp); err != nil {
				t.Fatal(err)
			}
			if resp.AgentID != id {
				t.Fatalf("renewal answered for agent %q, want %q", resp.AgentID, id)
			}
			renewed := tlsCert(t, resp.Certificate, key)
			if !renewed.Leaf.PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) {
				t.Error("the renewed certificate certifies another key")
			}
			if renewed.Leaf.DNSNames[0] != cert.Leaf.DNSNames[0] {
				t.Errorf("hostname changed from %q to %q", cert.Leaf.DNSNames[0], renewed.Leaf.DNSNames[0])
			}
			if got := testutil.ToFloat64(h.metrics.CertificatesIssued.WithLabelValues("renew")); got != issued+1 {
				t.Errorf("certificates issued for renewal went from %v to %v, want +1", issued, got)
			}
			v, _ := h.reg.Get(id)
			if v.CertSerial != serialHex(renewed.Leaf) || v.PrevCertSerial != serialHex(cert.Leaf) {
				t.Errorf("registry holds serials %s (previous %s), want %s (previous %s)",
					v.CertSerial, v.PrevCertSerial, serialHex(renewed.Leaf), serialHex(cert.Leaf))
			}
			// The new certificate is the agent's mTLS identity again.
			if rep := h.do(h.client(&renewed), "POST", protocol.PathHeartbeat, "", nil); rep.status != http.StatusOK {
				t.Fatalf("heartbeat with the renewed certificate: %d %s", rep.status, rep.body)
			}
		})
	}
}

// expiredHost is an enrolled agent whose certificate has expired by the
// clock of the API it renews with.
type expiredHost struct {
	cert tls.Certificate
	key  *ecdsa.PrivateKey
}

// sameKey is the renewal of a host that kept its key: the expired
// certificate and a CSR signed by the key it certifies.
func sameKey(t *testing.T, s expiredHost) protocol.RenewRequest {
	return protocol.RenewRequest{CSR: csrPEM(t, s.key), Certificate: chainPEM(t, s.cert)}
}

func revoke(t *testing.T, h *apiHarness, admin, agent tls.Certificate) {
	t.Helper()
	if rep := h.do(h.client(&admin), "DELETE", protocol.PathAgents+"/"+agentID(t, agent), "", nil); rep.status != http.StatusOK {
		t.Fatalf("revoke: %d %s", rep.status, rep.body)
	}
}

// renewOverMTLS renews a valid certificate the ordinary way.
func renewOverMTLS(t *testing.T, h *apiHarness, cert tls.Certificate, key *ecdsa.PrivateKey) tls.Certificate {
	t.Helper()
	body, _ := json.Marshal(protocol.RenewRequest{CSR: csrPEM(t, key)})
	rep := h.do(h.client(&cert), "POST", protocol.PathRenew, "", body)
	if rep.status != http.StatusOK {
		t.Fatalf("renew over mTLS: %d %s", rep.status, rep.body)
	}
	var resp protocol.CertificateResponse
	if err := json.Unmarshal(rep.body, &resp); err != nil {
		t.Fatal(err)
	}
	return tlsCert(t, resp.Certificate, key)
}

// TestAPI_RegisterWithExpiredCertificate: a host whose record was purged
// while it was off registers again with its expired certificate, keeping its
// id, within the grace window only.
func TestAPI_RegisterWithExpiredCertificate(t *testing.T) {
	h := newAPIHarness(t)
	tests := []struct {
		name   string
		after  time.Duration
		status int
	}{
		{"within the grace window", time.Hour, http.StatusOK},
		{"past the grace window", renewGrace + time.Minute, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, key := h.enrolledKey()
			id := agentID(t, cert)
			if rep := h.do(h.client(&cert), "DELETE", protocol.PathSelf, "", nil); rep.status != http.StatusNoContent {
				t.Fatalf("deregister: %d %s", rep.status, rep.body)
			}
			later := h.at(cert.Leaf.NotAfter.Add(tt.after))
			body := registerBody(t, func(r *protocol.RegisterRequest) {
				r.CSR = csrPEM(t, key)
				r.Certificate = chainPEM(t, cert)
			})
			rep := later.do(later.client(nil), "POST", protocol.PathRegister, "", body)
			if rep.status != tt.status {
				t.Fatalf("status %d (%s), want %d", rep.status, rep.body, tt.status)
			}
			v, listed := h.reg.Get(id)
			if tt.status != http.StatusOK {
				// The deregistration left a tombstone; a refused
				// registration must not have brought the agent back.
				if !listed || v.State != discovery.StateDeregistered {
					t.Errorf("after a refused registration: listed %v, state %q, want the tombstone", listed, v.State)
				}
				return
			}
			var resp protocol.CertificateResponse
			if err := json.Unmarshal(rep.body, &resp); err != nil {
				t.Fatal(err)
			}
			if resp.AgentID != id || !listed {
				t.Errorf("registered as %q (listed %v), want the certificate's id %q", resp.AgentID, listed, id)
			}
		})
	}
}
