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

package registry

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
)

// TestRegistry_Summarize checks the counts and that the first agents come
// out exactly as the first of List's order, for every limit and filter.
func TestRegistry_Summarize(t *testing.T) {
	clock := registrytest.NewClock()
	r := newTestRegistry(t, memory.New(), clock)
	ids := rand.Perm(60)
	for _, n := range ids {
		a := testAgent(fmt.Sprintf("a%02d", n))
		// Hostnames repeat, so the id breaks ties.
		a.Hostname = fmt.Sprintf("host%d.example.com", n%7)
		mustPut(t, r, a)
	}
	if _, err := r.Update(context.Background(), "a03", func(a *store.Agent) error { a.RevokedAt = clock.Now(); return nil }); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Update(context.Background(), "a05", func(a *store.Agent) error { a.Maintenance = true; return nil }); err != nil {
		t.Fatal(err)
	}
	all := r.List()
	for _, state := range []discovery.AgentState{"", discovery.StateHealthy, discovery.StateRevoked, discovery.StateMaintenance, discovery.StateExpired} {
		var want []discovery.AgentView
		for _, v := range all {
			if state == "" || v.State == state {
				want = append(want, v)
			}
		}
		for _, limit := range []int{0, 1, 5, 59, 100} {
			s := r.Summarize(state, limit)
			if s.Total != 60 || s.Matching != len(want) {
				t.Errorf("state %q limit %d: total %d matching %d, want 60 and %d", state, limit, s.Total, s.Matching, len(want))
			}
			n := min(limit, len(want))
			got := make([]string, 0, len(s.Agents))
			for _, v := range s.Agents {
				got = append(got, v.ID)
			}
			wantIDs := make([]string, 0, n)
			for _, v := range want[:n] {
				wantIDs = append(wantIDs, v.ID)
			}
			if !slices.Equal(got, wantIDs) {
				t.Errorf("state %q limit %d: agents %v, want %v", state, limit, got, wantIDs)
			}
		}
	}
	s := r.Summarize("", 0)
	if s.Counts[discovery.StateHealthy] != 58 || s.Counts[discovery.StateRevoked] != 1 || s.Counts[discovery.StateMaintenance] != 1 {
		t.Errorf("counts %v", s.Counts)
	}
}
