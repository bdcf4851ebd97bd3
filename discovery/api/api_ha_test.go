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
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/etcd"
	"github.com/baremetal-sd/baremetal_sd/internal/etcdtest"
	"github.com/baremetal-sd/baremetal_sd/internal/syncbuf"
)

// newReplicaHarness runs the API like newAPIHarness, but on the given store
// and with the CA and token key of dir, so that several harnesses act as
// server replicas sharing one store. No watch runs: a test decides what a
// replica has heard of.
func newReplicaHarness(t *testing.T, dir string, st store.Store) *apiHarness {
	t.Helper()
	authority, _, err := ca.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, _, err := ca.LoadOrCreateTokenKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := authority.EnsureServingCert(dir, []string{"127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := filepath.Join(dir, ca.ServerCertFile), filepath.Join(dir, ca.ServerKeyFile)
	serving, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncbuf.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	metrics := collector.NewServer(prometheus.NewRegistry())
	reg := registry.New(registry.Config{Store: st, TTL: time.Minute, Metrics: metrics, Logger: logger})
	if err := reg.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	tokens := ca.NewTokens(key)
	consumers := httpsd.NewConsumerLog(metrics, nil)
	api := New(Config{
		Registry: reg, Cache: httpsd.NewCache(reg, metrics), Store: st, CA: authority, Tokens: tokens,
		CertTTL: time.Hour, Metrics: metrics, Consumers: consumers, Logger: logger,
		ReservedNames: []string{"sd.example.org", "192.0.2.53"},
	})
	mux := http.NewServeMux()
	api.Routes(mux)
	srv := httptest.NewUnstartedServer(mux)
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{serving},
		ClientAuth:   tls.VerifyClientCertIfGiven,
		ClientCAs:    authority.ClientCAPool(),
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return &apiHarness{t: t, ca: authority, key: key, tokens: tokens, reg: reg, store: st, metrics: metrics, consumers: consumers, srv: srv, logs: logs}
}

// storedAgent reads an agent's record as a freshly started replica would.
func storedAgent(t *testing.T, s store.Store, id string) (store.Agent, bool) {
	t.Helper()
	agents, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		if a.ID == id {
			return a, true
		}
	}
	return store.Agent{}, false
}

func (h *apiHarness) renew(cert tls.Certificate) (reply, tls.Certificate) {
	h.t.Helper()
	key := newKey(h.t)
	body, _ := json.Marshal(protocol.RenewRequest{CSR: csrPEM(h.t, key)})
	rep := h.do(h.client(&cert), "POST", protocol.PathRenew, "", body)
	if rep.status != http.StatusOK {
		return rep, tls.Certificate{}
	}
	var resp protocol.CertificateResponse
	if err := json.Unmarshal(rep.body, &resp); err != nil {
		h.t.Fatal(err)
	}
	return rep, tlsCert(h.t, resp.Certificate, key)
}

// TestAPIHA_ConcurrentChangesThroughTwoReplicas changes one agent through
// two replicas, the second not having heard of the first's change yet:
// neither change may silently undo the other.
func TestAPIHA_ConcurrentChangesThroughTwoReplicas(t *testing.T) {
	c := etcdtest.Start(t, 1)
	revoke := func(t *testing.T, a *apiHarness, id string) {
		if rep := a.do(a.client(nil), "DELETE", protocol.PathAgents+"/"+id, a.token(ca.TokenSpec{Scope: ca.ScopeAdmin}), nil); rep.status != http.StatusOK {
			t.Fatalf("revoke through a: %d %s", rep.status, rep.body)
		}
	}
	maintenance := func(t *testing.T, a *apiHarness, id string) {
		if rep := a.do(a.client(nil), "POST", protocol.PathAgents+"/"+id+"/maintenance", a.token(ca.TokenSpec{Scope: ca.ScopeAdmin}), []byte(`{"maintenance":true}`)); rep.status != http.StatusOK {
			t.Fatalf("maintenance through a: %d %s", rep.status, rep.body)
		}
	}
	renew := func(t *testing.T, b *apiHarness, cert tls.Certificate) (int, string) {
		rep, renewed := b.renew(cert)
		if rep.status != http.StatusOK {
			return rep.status, ""
		}
		return rep.status, serialOf(t, renewed)
	}
	reregister := func(t *testing.T, b *apiHarness, cert tls.Certificate) (int, string) {
		key := newKey(t)
		rep := b.do(b.client(&cert), "POST", protocol.PathRegister, "", registerBody(t, func(r *protocol.RegisterRequest) { r.CSR = csrPEM(t, key) }))
		if rep.status != http.StatusOK {
			return rep.status, ""
		}
		var resp protocol.CertificateResponse
		if err := json.Unmarshal(rep.body, &resp); err != nil {
			t.Fatal(err)
		}
		return rep.status, serialOf(t, tlsCert(t, resp.Certificate, key))
	}
	deregister := func(_ *testing.T, b *apiHarness, cert tls.Certificate) (int, string) {
		return b.do(b.client(&cert), "DELETE", protocol.PathSelf, "", nil).status, ""
	}
	tests := []struct {
		name string
		// first runs through replica a, then second through b.
		first  func(t *testing.T, a *apiHarness, id string)
		second func(t *testing.T, b *apiHarness, cert tls.Certificate) (int, string)
		status int
		// maintenance is what the stored record must say; a new serial from
		// second must be the stored one.
		revoked, maintenance bool
	}{
		{"revoke, then renew", revoke, renew, http.StatusForbidden, true, false},
		{"revoke, then re-register by certificate", revoke, reregister, http.StatusForbidden, true, false},
		{"revoke, then deregister", revoke, deregister, http.StatusForbidden, true, false},
		{"maintenance, then renew", maintenance, renew, http.StatusOK, false, true},
		{"maintenance, then re-register by certificate", maintenance, reregister, http.StatusOK, false, true},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			prefix := fmt.Sprintf("/api-ha-%d/", i)
			a := newReplicaHarness(t, dir, registrytest.OpenEtcdStore(t, c, prefix, etcd.Options{ReplicaID: "a"}))
			resp, cert := a.enroll(ca.TokenSpec{}, nil)
			// b starts after the enrollment, so it knows the agent.
			b := newReplicaHarness(t, dir, registrytest.OpenEtcdStore(t, c, prefix, etcd.Options{ReplicaID: "b"}))
			if _, ok := b.reg.Get(resp.AgentID); !ok {
				t.Fatal("b does not know the agent")
			}

			tc.first(t, a, resp.AgentID)
			status, serial := tc.second(t, b, cert)
			if status != tc.status {
				t.Fatalf("second change through b: status %d, want %d", status, tc.status)
			}
			got, ok := storedAgent(t, a.store, resp.AgentID)
			if !ok {
				t.Fatal("agent record gone")
			}
			if got.Revoked() != tc.revoked || got.Maintenance != tc.maintenance {
				t.Errorf("stored record: revoked %v, maintenance %v; want %v, %v", got.Revoked(), got.Maintenance, tc.revoked, tc.maintenance)
			}
			if serial != "" && got.CertSerial != serial {
				t.Errorf("stored serial %s, want the new certificate's %s", got.CertSerial, serial)
			}
			// b's memory follows what it wrote or was shown.
			if v, _ := b.reg.Get(resp.AgentID); v.Revoked() != got.Revoked() || v.Maintenance != got.Maintenance {
				t.Errorf("b's view (revoked %v, maintenance %v) differs from the store's (%v, %v)", v.Revoked(), v.Maintenance, got.Revoked(), got.Maintenance)
			}
		})
	}
}

func serialOf(t *testing.T, c tls.Certificate) string {
	t.Helper()
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return serialHex(leaf)
}
