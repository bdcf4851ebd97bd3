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
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
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
		wantState  discovery.AgentState
	}{
		{"register again", false, http.StatusOK, discovery.StateMaintenance},
		{"revoked while deregistered", true, http.StatusForbidden, discovery.StateRevoked},
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
			var listed []discovery.AgentView
			if err := json.Unmarshal(rep.body, &listed); err != nil || len(listed) != 1 || listed[0].State != discovery.StateDeregistered || !listed[0].Deregistered {
				t.Fatalf("admin list after deregistering: %d %s, want the agent as %q", rep.status, rep.body, discovery.StateDeregistered)
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
