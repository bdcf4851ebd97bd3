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
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/storetest"
)

// testAgent is the conformance suite's complete, valid record.
func testAgent(id string) *store.Agent { return storetest.NewAgent(id) }

func newTestRegistry(t *testing.T, st store.Store, clock *registrytest.Clock) *Registry {
	t.Helper()
	r := New(Config{
		Store:             st,
		TTL:               time.Minute,
		HeartbeatInterval: 15 * time.Second,
		Retention:         time.Hour,
		Now:               clock.Now,
	})
	if err := r.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r
}

func mustPut(t *testing.T, r *Registry, a *store.Agent) {
	t.Helper()
	a.LastSeen = r.cfg.Now()
	if err := r.Put(context.Background(), a); err != nil {
		t.Fatal(err)
	}
}

func TestRegistry_States(t *testing.T) {
	clock := registrytest.NewClock()
	r := newTestRegistry(t, memory.New(), clock)
	mustPut(t, r, testAgent("a"))
	ctx := context.Background()

	steps := []struct {
		name    string
		advance time.Duration
		before  func()
		want    discovery.AgentState
	}{
		{name: "fresh", want: discovery.StateHealthy},
		{name: "missed two heartbeats", advance: 31 * time.Second, want: discovery.StateStale},
		{name: "past TTL", advance: 30 * time.Second, want: discovery.StateExpired},
		{name: "heartbeat revives", before: func() {
			if err := r.Heartbeat("a", "s-a", "", nil); err != nil {
				t.Fatal(err)
			}
		}, want: discovery.StateHealthy},
		{name: "maintenance", before: func() {
			if _, err := r.Update(ctx, "a", func(a *store.Agent) error { a.Maintenance = true; return nil }); err != nil {
				t.Fatal(err)
			}
		}, want: discovery.StateMaintenance},
		{name: "revoked", before: func() {
			if _, err := r.Update(ctx, "a", func(a *store.Agent) error { a.RevokedAt = clock.Now(); return nil }); err != nil {
				t.Fatal(err)
			}
		}, want: discovery.StateRevoked},
	}
	for _, s := range steps {
		clock.Advance(s.advance)
		if s.before != nil {
			s.before()
		}
		r.Sweep(ctx)
		v, ok := r.Get("a")
		if !ok {
			t.Fatalf("%s: agent missing", s.name)
		}
		if v.State != s.want {
			t.Errorf("%s: state %s, want %s", s.name, v.State, s.want)
		}
	}
}

func TestRegistry_HeartbeatChecksCertificate(t *testing.T) {
	clock := registrytest.NewClock()
	r := newTestRegistry(t, memory.New(), clock)
	a := testAgent("a")
	a.PrevCertSerial = "old"
	a.PrevCertNotAfter = clock.Now().Add(time.Hour)
	mustPut(t, r, a)

	tests := []struct {
		id, serial string
		want       error
	}{
		{"a", "s-a", nil},
		{"a", "old", nil},
		{"a", "other", ErrSuperseded},
		{"missing", "s-a", store.ErrNotFound},
	}
	for _, tt := range tests {
		if err := r.Heartbeat(tt.id, tt.serial, "", nil); !errors.Is(err, tt.want) {
			t.Errorf("Heartbeat(%q, %q) = %v, want %v", tt.id, tt.serial, err, tt.want)
		}
	}
	clock.Advance(2 * time.Hour)
	if err := r.Heartbeat("a", "old", "", nil); !errors.Is(err, ErrSuperseded) {
		t.Errorf("previous certificate after its expiry: %v, want ErrSuperseded", err)
	}
}

func TestRegistry_RestartGrace(t *testing.T) {
	clock := registrytest.NewClock()
	st := memory.New()
	r := newTestRegistry(t, st, clock)
	mustPut(t, r, testAgent("a"))

	// The server was down for an hour: far past the TTL.
	clock.Advance(time.Hour)
	r2 := newTestRegistry(t, st, clock)
	r2.Sweep(context.Background())
	if v, _ := r2.Get("a"); v.State != discovery.StateStale {
		t.Fatalf("state %s right after a restart, an hour after the last heartbeat: want stale, listed for one TTL of grace but not shown healthy", v.State)
	}
	if err := r2.Heartbeat("a", "s-a", "", nil); err != nil {
		t.Fatal(err)
	}
	if v, _ := r2.Get("a"); v.State != discovery.StateHealthy {
		t.Fatalf("state %s after a heartbeat, want healthy", v.State)
	}
	clock.Advance(time.Hour)
	r2 = newTestRegistry(t, st, clock)
	r2.Sweep(context.Background())
	clock.Advance(61 * time.Second)
	r2.Sweep(context.Background())
	if v, _ := r2.Get("a"); v.State != discovery.StateExpired {
		t.Fatalf("state %s one TTL after restart without heartbeat, want expired", v.State)
	}
}

func TestRegistry_FlushBatchesHeartbeats(t *testing.T) {
	clock := registrytest.NewClock()
	st := &countingStore{Store: memory.New()}
	r := newTestRegistry(t, st, clock)
	for _, id := range []string{"a", "b", "c"} {
		mustPut(t, r, testAgent(id))
	}
	clock.Advance(10 * time.Second)
	for i := 0; i < 100; i++ {
		for _, id := range []string{"a", "b"} {
			if err := r.Heartbeat(id, "s-"+id, "", nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	r.Flush(context.Background())
	r.Flush(context.Background()) // nothing moved: no write
	if st.touchCalls != 1 || st.touched != 2 {
		t.Fatalf("touch calls %d with %d agents, want 1 call with 2", st.touchCalls, st.touched)
	}
	agents, err := st.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		want := clock.Now().Add(-10 * time.Second)
		if a.ID != "c" {
			want = clock.Now()
		}
		if !a.LastSeen.Equal(want) {
			t.Errorf("%s: stored LastSeen %v, want %v", a.ID, a.LastSeen, want)
		}
	}
}

func TestRegistry_PurgeAfterRetention(t *testing.T) {
	clock := registrytest.NewClock()
	st := memory.New()
	r := newTestRegistry(t, st, clock)
	mustPut(t, r, testAgent("a"))
	ctx := context.Background()

	clock.Advance(time.Minute + 30*time.Minute)
	r.Sweep(ctx)
	if v, ok := r.Get("a"); !ok || v.State != discovery.StateExpired {
		t.Fatalf("expired agent must stay listed during retention, got %+v %v", v.State, ok)
	}
	clock.Advance(31 * time.Minute)
	r.Sweep(ctx)
	if _, ok := r.Get("a"); ok {
		t.Fatal("agent still listed after retention")
	}
	if agents, _ := st.List(ctx); len(agents) != 0 {
		t.Fatalf("agent still stored after purge: %v", agents)
	}
}

func TestRegistry_FailedPutIsNotVisible(t *testing.T) {
	clock := registrytest.NewClock()
	st := &countingStore{Store: memory.New(), failPut: true}
	r := newTestRegistry(t, st, clock)
	if err := r.Put(context.Background(), testAgent("a")); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Put error %v, want ErrUnavailable", err)
	}
	if _, ok := r.Get("a"); ok {
		t.Fatal("a registration the store refused is visible")
	}
}

// countingStore counts Touch calls and can fail Puts.
type countingStore struct {
	store.Store
	mu         sync.Mutex
	touchCalls int
	touched    int
	failPut    bool
}

func (s *countingStore) Touch(ctx context.Context, t []store.Touch) error {
	s.mu.Lock()
	s.touchCalls++
	s.touched += len(t)
	s.mu.Unlock()
	return s.Store.Touch(ctx, t)
}

func (s *countingStore) Put(ctx context.Context, a *store.Agent) error {
	if s.failPut {
		return store.ErrUnavailable
	}
	return s.Store.Put(ctx, a)
}

// TestRegistry_HeartbeatsRaceWithUpdates runs heartbeats of an expired agent
// against maintenance changes and a revocation of the same agent. Under the
// race detector it catches unsynchronized reads of the record; in any build
// it checks that no heartbeat brings a revoked agent back into http_sd.
func TestRegistry_HeartbeatsRaceWithUpdates(t *testing.T) {
	ctx := context.Background()
	for round := range 50 {
		clock := registrytest.NewClock()
		r := newTestRegistry(t, memory.New(), clock)
		mustPut(t, r, testAgent("a"))
		clock.Advance(2 * time.Minute)
		r.Sweep(ctx)
		if r.listed("a") {
			t.Fatal("agent still listed after its TTL")
		}

		var wg sync.WaitGroup
		wg.Go(func() {
			for range 200 {
				// ErrRevoked once the revocation landed; nil before.
				if err := r.Heartbeat("a", "s-a", "ok", nil); err != nil && !errors.Is(err, ErrRevoked) {
					t.Errorf("heartbeat: %v", err)
					return
				}
			}
		})
		wg.Go(func() {
			for i := range 20 {
				if _, err := r.Update(ctx, "a", func(a *store.Agent) error { a.Maintenance = i%2 == 0; return nil }); err != nil {
					t.Errorf("maintenance: %v", err)
					return
				}
			}
			if _, err := r.Update(ctx, "a", func(a *store.Agent) error { a.RevokedAt = clock.Now(); return nil }); err != nil {
				t.Errorf("revoke: %v", err)
			}
		})
		wg.Wait()
		if r.listed("a") {
			t.Fatalf("round %d: a heartbeat brought the revoked agent back into http_sd", round)
		}
	}
}

// listed reports whether the agent is in http_sd.
func (r *Registry) listed(id string) bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.shards[shardOf(id)].agents[id]
	return ok && e.listed.Load()
}
