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

package discovery

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
)

// TestAPI_DeregisterKeepsWhatTheAgentMayNotChange is the attack of a host
// that deregisters itself to shed what its operator and its token fixed:
// the labels the token pinned, maintenance, and a revocation to come. The
// record stays as a tombstone, so registering again with the same
// certificate brings all of it back, and an operator can still revoke it.
func TestAPI_DeregisterKeepsWhatTheAgentMayNotChange(t *testing.T) {
	tests := []struct {
		name string
		// revoke: the operator revokes the agent once it is gone.
		revoke bool
		// wantStatus is the answer to the agent registering again.
		wantStatus int
		wantState  AgentState
	}{
		{"register again", false, http.StatusOK, StateMaintenance},
		{"revoked while deregistered", true, http.StatusForbidden, StateRevoked},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := newAPIHarness(t)
			admin := h.clientCert(ca.RoleAdmin)
			adminClient := h.client(&admin)
			_, cert := h.enroll(ca.TokenSpec{Labels: map[string]string{"role": "db"}}, func(r *protocol.RegisterRequest) {
				r.Labels = map[string]string{"rack": "r1"}
			})
			id := agentID(t, cert)
			agent := h.client(&cert)
			if rep := h.do(adminClient, "POST", protocol.PathAgents+"/"+id+"/maintenance", "", []byte(`{"maintenance":true}`)); rep.status != http.StatusOK {
				t.Fatalf("maintenance: %d %s", rep.status, rep.body)
			}

			if rep := h.do(agent, "DELETE", protocol.PathSelf, "", nil); rep.status != http.StatusNoContent {
				t.Fatalf("deregister: %d %s", rep.status, rep.body)
			}
			// Gone for everything but the operator's list.
			for _, c := range []struct{ method, path string }{
				{"POST", protocol.PathHeartbeat}, {"DELETE", protocol.PathSelf},
			} {
				if rep := h.do(agent, c.method, c.path, "", nil); rep.status != http.StatusNotFound {
					t.Errorf("%s %s after deregistering: %d %s, want 404", c.method, c.path, rep.status, rep.body)
				}
			}
			body, _ := json.Marshal(protocol.RenewRequest{CSR: csrPEM(t, newKey(t))})
			if rep := h.do(agent, "POST", protocol.PathRenew, "", body); rep.status != http.StatusNotFound {
				t.Errorf("renew after deregistering: %d %s, want 404", rep.status, rep.body)
			}
			discoveryCert := h.clientCert(ca.RoleDiscovery)
			if rep := h.do(h.client(&discoveryCert), "GET", protocol.PathDiscovery, "", nil); rep.status != http.StatusOK || strings.Contains(string(rep.body), "host1.example.com") {
				t.Errorf("http_sd after deregistering: %d %s, want no target", rep.status, rep.body)
			}
			if s := h.reg.Summarize("", 10); s.Total != 0 {
				t.Errorf("the tombstone counts as an agent: %+v", s)
			}
			rep := h.do(adminClient, "GET", protocol.PathAgents, "", nil)
			var listed []AgentView
			if err := json.Unmarshal(rep.body, &listed); err != nil || len(listed) != 1 || listed[0].State != StateDeregistered || !listed[0].Deregistered {
				t.Fatalf("admin list after deregistering: %d %s, want the agent as %q", rep.status, rep.body, StateDeregistered)
			}

			if tt.revoke {
				if rep := h.do(adminClient, "DELETE", protocol.PathAgents+"/"+id, "", nil); rep.status != http.StatusOK {
					t.Fatalf("revoke the deregistered agent: %d %s, want 200", rep.status, rep.body)
				}
			}
			rep = h.do(agent, "POST", protocol.PathRegister, "", registerBody(t, func(r *protocol.RegisterRequest) {
				r.Labels = map[string]string{"rack": "r2"} // the pinned role left out
			}))
			if rep.status != tt.wantStatus {
				t.Fatalf("register again by certificate: %d %s, want %d", rep.status, rep.body, tt.wantStatus)
			}
			v, ok := h.reg.Get(id)
			if !ok || v.State != tt.wantState {
				t.Fatalf("after registering again: found %v, state %q, want %q", ok, v.State, tt.wantState)
			}
			if v.Labels.Get("role") != "db" || v.PinnedLabels.Get("role") != "db" || !v.Maintenance {
				t.Errorf("enrollment lost: labels %v, pinned %v, maintenance %v", v.Labels, v.PinnedLabels, v.Maintenance)
			}
			if stored, err := h.store.List(context.Background()); err != nil || len(stored) != 1 || stored[0].Revoked() != tt.revoke {
				t.Errorf("stored: %+v, %v", stored, err)
			}
		})
	}
}

// TestRegistry_TombstonePurgedAfterRenewGrace: a tombstone lives as long as
// a certificate of the agent can register again, over mTLS or by proof of
// its key after expiry, and no longer.
func TestRegistry_TombstonePurgedAfterRenewGrace(t *testing.T) {
	clock := newFakeClock()
	store := memory.New()
	r := NewRegistry(RegistryConfig{Store: store, TTL: time.Minute, Retention: time.Hour, RenewGrace: 48 * time.Hour, Now: clock.Now})
	if err := r.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := testAgent("a")
	a.CertNotAfter = clock.Now().Add(24 * time.Hour)
	a.PrevCertSerial, a.PrevCertNotAfter = "s-old", clock.Now().Add(time.Hour)
	mustPut(t, r, a)

	for _, tt := range []struct {
		serial string
		want   error
	}{
		{"s-other", ErrSuperseded},
		{"s-a", nil},
		{"s-a", ErrDeregistered},
	} {
		if err := r.Deregister(ctx, "a", tt.serial); !errorIs(err, tt.want) {
			t.Fatalf("deregister with %s: %v, want %v", tt.serial, err, tt.want)
		}
	}
	if err := r.Heartbeat("a", "s-a", ""); !errorIs(err, ErrDeregistered) {
		t.Fatalf("heartbeat of a tombstone: %v, want %v", err, ErrDeregistered)
	}
	for _, step := range []struct {
		advance time.Duration
		kept    bool
	}{
		{time.Hour, true}, // past the TTL and the expiry retention
		// The certificate expires at +24h, its grace window ends at +72h.
		{72*time.Hour - time.Hour - time.Minute, true},
		{2 * time.Minute, false},
	} {
		clock.Advance(step.advance)
		r.Sweep(ctx)
		v, ok := r.Get("a")
		if ok != step.kept || (ok && (v.State != StateDeregistered || r.listed("a"))) {
			t.Fatalf("at %v: kept %v (state %q, listed %v), want kept %v", clock.Now(), ok, v.State, r.listed("a"), step.kept)
		}
		if stored, _ := store.List(ctx); (len(stored) == 1) != step.kept {
			t.Fatalf("at %v: stored %+v, want kept %v", clock.Now(), stored, step.kept)
		}
	}
}

func errorIs(err, want error) bool {
	if want == nil {
		return err == nil
	}
	return errors.Is(err, want)
}

// TestRegistry_ExpiredAgentRetiredAsTombstone: going silent past the
// retention must not shed what deregistering no longer sheds. An expired
// agent whose certificate can still register becomes a tombstone instead of
// being purged; one whose certificates are past the grace window is purged.
func TestRegistry_ExpiredAgentRetiredAsTombstone(t *testing.T) {
	tests := []struct {
		name      string
		notAfter  time.Duration // certificate expiry, from the registration
		tombstone bool
	}{
		{"certificate still valid", 24 * time.Hour, true},
		{"certificate expired, within the grace window", -time.Hour, true},
		{"certificate past the grace window", -49 * time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := newFakeClock()
			store := memory.New()
			r := NewRegistry(RegistryConfig{Store: store, TTL: time.Minute, Retention: time.Hour, RenewGrace: 48 * time.Hour, Now: clock.Now})
			ctx := context.Background()
			if err := r.Load(ctx); err != nil {
				t.Fatal(err)
			}
			a := testAgent("a")
			a.PinnedLabels = a.Labels
			a.Maintenance = true
			a.CertNotAfter = clock.Now().Add(tt.notAfter)
			mustPut(t, r, a)
			clock.Advance(time.Minute + time.Hour + time.Second) // past TTL and retention
			r.Sweep(ctx)
			v, ok := r.Get("a")
			if ok != tt.tombstone || (ok && (v.State != StateDeregistered || !v.Maintenance || v.PinnedLabels.IsEmpty())) {
				t.Fatalf("after the retention: kept %v as %q (%+v), want tombstone %v", ok, v.State, v.Agent, tt.tombstone)
			}
			if stored, _ := store.List(ctx); (len(stored) == 1) != tt.tombstone {
				t.Fatalf("stored %+v, want tombstone %v", stored, tt.tombstone)
			}
		})
	}
}
