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
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/client"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
	"github.com/baremetal-sd/baremetal_sd/internal/testca"
)

// legacyHarness is an API harness with its root CA as a test can sign with
// it, as a 0.1.0 server signed certificates: directly with ca.key.
func legacyHarness(t *testing.T) (*apiHarness, *testca.CA) {
	t.Helper()
	dir := t.TempDir()
	h := newReplicaHarness(t, dir, memory.New())
	return h, testca.Load(t, filepath.Join(dir, ca.CertFile), filepath.Join(dir, ca.KeyFile))
}

// signLegacy re-signs an agent certificate as 0.1.0 issued it: same
// subject, SANs, serial and key, signed directly by ca.key.
func signLegacy(t *testing.T, root *testca.CA, c tls.Certificate) tls.Certificate {
	t.Helper()
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	legacy := root.Resign(t, leaf).TLSChain()
	legacy.PrivateKey = c.PrivateKey
	return legacy
}

// recorder is an impostor's handler: it keeps every request it receives.
type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(req.Body, 1<<20))
	r.mu.Lock()
	r.seen = append(r.seen, req.Method+" "+req.URL.Path+" "+req.Header.Get("Authorization")+" "+string(body))
	r.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (r *recorder) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

// TestClient_RefusesAnImpostorServer is the attack of the security review:
// an enrolled host registers as localhost/127.0.0.1 and serves TLS with its
// agent certificate; an agent pointed at it must not send its enrollment
// token, whatever CA file it trusts.
func TestClient_RefusesAnImpostorServer(t *testing.T) {
	h, root := legacyHarness(t)
	_, agentCert := h.enroll(ca.TokenSpec{}, func(r *protocol.RegisterRequest) { r.Hostname = "localhost"; r.Address = "127.0.0.1" })
	legacy := signLegacy(t, root, agentCert)
	withAgentCA := h.ca.Pool().Clone()
	withAgentCA.AddCert(h.ca.AgentCACertificate())
	tests := []struct {
		name  string
		cert  tls.Certificate
		roots *x509.CertPool
		want  string
	}{
		{"agent certificate, client trusts ca.crt", agentCert, h.ca.Pool(), "path length"},
		{"agent certificate, client also trusts the agent CA", agentCert, withAgentCA, `role "agent"`},
		{"0.1.0 agent certificate, client trusts ca.crt", legacy, h.ca.Pool(), `role "agent"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &recorder{}
			impostor := httptest.NewUnstartedServer(rec)
			impostor.TLS = &tls.Config{Certificates: []tls.Certificate{tt.cert}}
			impostor.Config.ErrorLog = nil
			impostor.StartTLS()
			defer impostor.Close()
			c, err := client.NewClient(client.Config{URLs: []string{impostor.URL}, RootCAs: tt.roots, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.CloseIdleConnections()
			token := h.token(ca.TokenSpec{})
			_, err = c.Register(context.Background(), &protocol.RegisterRequest{Hostname: "victim", Port: 9956, CSR: csrPEM(t, newKey(t))}, token)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("register with the impostor: %v, want an error containing %q", err, tt.want)
			}
			if seen := rec.requests(); len(seen) != 0 {
				t.Fatalf("the impostor received %q", seen)
			}
		})
	}
}

// TestAPI_LegacyAgentCertificate: after the upgrade a certificate that a
// 0.1.0 server signed directly with ca.key still heartbeats, and the
// server asks for a renewal at once, which comes from the agent CA.
func TestAPI_LegacyAgentCertificate(t *testing.T) {
	h, root := legacyHarness(t)
	_, current := h.enroll(ca.TokenSpec{}, nil)
	legacy := signLegacy(t, root, current)

	heartbeat := func(c tls.Certificate) protocol.HeartbeatResponse {
		t.Helper()
		rep := h.do(h.client(&c), "POST", protocol.PathHeartbeat, "", nil)
		if rep.status != http.StatusOK {
			t.Fatalf("heartbeat: %d %s", rep.status, rep.body)
		}
		var hb protocol.HeartbeatResponse
		if err := json.Unmarshal(rep.body, &hb); err != nil {
			t.Fatal(err)
		}
		return hb
	}
	if hb := heartbeat(current); hb.RenewNow {
		t.Error("a current certificate is asked to renew at once")
	}
	if hb := heartbeat(legacy); !hb.RenewNow {
		t.Error("a 0.1.0 certificate is not asked to renew at once")
	}
	key := newKey(t)
	body, _ := json.Marshal(protocol.RenewRequest{CSR: csrPEM(t, key)})
	rep := h.do(h.client(&legacy), "POST", protocol.PathRenew, "", body)
	if rep.status != http.StatusOK {
		t.Fatalf("renew with the 0.1.0 certificate: %d %s", rep.status, rep.body)
	}
	var renewed protocol.CertificateResponse
	if err := json.Unmarshal(rep.body, &renewed); err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.ParseCertificatePEM([]byte(renewed.Certificate))
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.CheckSignatureFrom(h.ca.AgentCACertificate()); err != nil {
		t.Fatalf("renewed certificate is not from the agent CA: %v", err)
	}
	if renewed.AgentCACertificate != string(h.ca.AgentCACertificatePEM()) || renewed.ClientCACertificate != string(h.ca.ClientCACertificatePEM()) {
		t.Error("reply lacks the issuing CAs")
	}
}

// TestAPI_RoleOnlyFromItsIssuer: the server takes a certificate's role from
// its subject only when the CA that signed it issues that role. An admin
// certificate signed with the agent CA's key (which never issues one) is
// refused with 403, not let into the admin API.
func TestAPI_RoleOnlyFromItsIssuer(t *testing.T) {
	dir := t.TempDir()
	h := newReplicaHarness(t, dir, memory.New())
	agentCA := testca.Load(t, filepath.Join(dir, ca.AgentCACertFile), filepath.Join(dir, ca.AgentCAKeyFile))
	forged := agentCA.Issue(t, testca.Leaf{
		CommonName: "forged", OrganizationalUnit: []string{ca.RoleOU(ca.RoleAdmin)}, Serial: 7, Usage: testca.ClientAuth,
	}).TLSChain()
	rep := h.do(h.client(&forged), "GET", protocol.PathAgents, "", nil)
	if rep.status != http.StatusForbidden || !strings.Contains(string(rep.body), "not accepted") {
		t.Fatalf("admin API with an admin certificate from the agent CA: %d %s, want 403", rep.status, rep.body)
	}
	admin := h.clientCert(ca.RoleAdmin)
	if rep := h.do(h.client(&admin), "GET", protocol.PathAgents, "", nil); rep.status != http.StatusOK {
		t.Fatalf("admin API with a real admin certificate: %d %s", rep.status, rep.body)
	}
}
