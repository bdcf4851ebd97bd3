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

// Package storetest is the conformance suite of the registry's stores: what
// every store.Store implementation must do, run by each implementation's
// tests against a real instance (a file for bolt, an etcd cluster for etcd).
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// NewAgent returns a complete, valid agent record with the given id.
func NewAgent(id string) *store.Agent {
	return &store.Agent{
		ID:         id,
		Hostname:   id + ".example.com",
		Address:    "192.0.2.10",
		Port:       9956,
		Labels:     labels.FromStrings("role", "web"),
		Exporters:  []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
		CertSerial: "s-" + id,
	}
}

// SameAgent compares two records as stores keep them: times in UTC.
func SameAgent(a, b store.Agent) bool {
	for _, p := range []*store.Agent{&a, &b} {
		p.LastSeen = p.LastSeen.UTC()
		p.RegisteredAt = p.RegisteredAt.UTC()
		p.CertNotAfter = p.CertNotAfter.UTC()
		p.PrevCertNotAfter = p.PrevCertNotAfter.UTC()
		p.RevokedAt = p.RevokedAt.UTC()
		p.HealthReportedAt = p.HealthReportedAt.UTC()
		if p.ExporterHealth != nil {
			hs := append([]protocol.ExporterHealth(nil), p.ExporterHealth...)
			for i := range hs {
				hs[i].Since, hs[i].LastResult = hs[i].Since.UTC(), hs[i].LastResult.UTC()
			}
			p.ExporterHealth = hs
		}
	}
	return reflect.DeepEqual(a, b)
}

// SortedList lists a store, ordered by agent id.
func SortedList(t *testing.T, s store.Store) []store.Agent {
	t.Helper()
	agents, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(agents, func(i, j int) bool { return agents[i].ID < agents[j].ID })
	return agents
}

// Run checks what every Store must do. newStore opens an empty store;
// reopen, when not nil, opens a second store on the data of the first.
func Run(t *testing.T, newStore func(*testing.T) store.Store, reopen func(*testing.T, store.Store) store.Store) {
	ctx := context.Background()
	base := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	t.Run("put, replace, list", func(t *testing.T) {
		s := newStore(t)
		a := NewAgent("a")
		a.LastSeen = base
		a.RegisteredAt = base
		if err := s.Put(ctx, a); err != nil {
			t.Fatal(err)
		}
		a.Exporters[0].Name = "mutated after put"
		got := SortedList(t, s)
		if len(got) != 1 || got[0].Labels.Get("role") != "web" || got[0].Exporters[0].Name != "node" || !got[0].LastSeen.Equal(base) {
			t.Fatalf("list %+v", got)
		}
		b := NewAgent("a")
		b.Port = 1234
		b.LastSeen = base
		if err := s.Put(ctx, b); err != nil {
			t.Fatal(err)
		}
		got = SortedList(t, s)
		if len(got) != 1 || got[0].Port != 1234 {
			t.Fatalf("replace: %+v", got)
		}
		if !SameAgent(got[0], *b) {
			t.Fatalf("round trip\n got %+v\nwant %+v", got[0], *b)
		}
		got[0].Exporters[0].Name = "mutated after list"
		if again := SortedList(t, s); again[0].Exporters[0].Name != "node" {
			t.Fatal("list returns records aliasing the store")
		}
	})
	t.Run("delete is idempotent", func(t *testing.T) {
		s := newStore(t)
		_ = s.Put(ctx, NewAgent("a"))
		for range 2 {
			if err := s.Delete(ctx, "a"); err != nil {
				t.Fatal(err)
			}
		}
		if got := SortedList(t, s); len(got) != 0 {
			t.Fatalf("deleted agent listed: %+v", got)
		}
	})
	t.Run("touch", func(t *testing.T) {
		s := newStore(t)
		a := NewAgent("a")
		a.LastSeen = base
		_ = s.Put(ctx, a)
		_ = s.Put(ctx, NewAgent("gone"))
		_ = s.Delete(ctx, "gone")
		touches := []store.Touch{{ID: "a", LastSeen: base.Add(time.Minute)}, {ID: "unknown", LastSeen: base}, {ID: "gone", LastSeen: base}}
		if err := s.Touch(ctx, touches); err != nil {
			t.Fatal(err)
		}
		got := SortedList(t, s)
		if len(got) != 1 || got[0].ID != "a" || !got[0].LastSeen.Equal(base.Add(time.Minute)) {
			t.Fatalf("after touch: %+v", got)
		}
		_ = s.Touch(ctx, []store.Touch{{ID: "a", LastSeen: base}})
		if got := SortedList(t, s); !got[0].LastSeen.Equal(base.Add(time.Minute)) {
			t.Fatalf("older touch moved LastSeen to %v", got[0].LastSeen)
		}
		if reopen == nil {
			return
		}
		// A fresh store on the same data (a restart, another replica)
		// reads the same.
		if got := SortedList(t, reopen(t, s)); len(got) != 1 || !got[0].LastSeen.Equal(base.Add(time.Minute)) {
			t.Fatalf("fresh store after touch: %+v", got)
		}
	})
	t.Run("exporter health", func(t *testing.T) {
		s := newStore(t)
		a := NewAgent("a")
		a.LastSeen = base
		a.ExporterHealth = []protocol.ExporterHealth{
			{Name: "node", State: protocol.ExporterDown, Reason: "connect: connection refused", Since: base.Add(-time.Minute), LastResult: base},
			{Name: "mysqld", State: protocol.ExporterUnknown},
		}
		a.HealthReportedAt = base
		if err := s.Put(ctx, a); err != nil {
			t.Fatal(err)
		}
		want := a.Clone()
		a.ExporterHealth[0].State = "mutated after put"
		if got := SortedList(t, s); len(got) != 1 || !SameAgent(got[0], *want) {
			t.Fatalf("round trip\n got %+v\nwant %+v", got, *want)
		}
		// A change of something else keeps the health; a change of the
		// health is stored like any other.
		got, err := s.Update(ctx, "a", nil, func(cur *store.Agent) (*store.Agent, error) {
			if len(cur.ExporterHealth) != 2 || cur.ExporterHealth[0].Reason != "connect: connection refused" {
				return nil, fmt.Errorf("update sees health %+v", cur.ExporterHealth)
			}
			cur.Maintenance = true
			cur.ExporterHealth[0].State, cur.ExporterHealth[0].Reason = protocol.ExporterUp, ""
			cur.HealthReportedAt = base.Add(time.Minute)
			return cur, nil
		})
		if err != nil || got.ExporterHealth[0].State != protocol.ExporterUp {
			t.Fatalf("update: %+v, %v", got, err)
		}
		check := func(t *testing.T, s store.Store) {
			t.Helper()
			list := SortedList(t, s)
			if len(list) != 1 || !SameAgent(list[0], *got) {
				t.Fatalf("after update\n got %+v\nwant %+v", list, *got)
			}
		}
		check(t, s)
		if reopen != nil {
			check(t, reopen(t, s))
		}
	})
	t.Run("update", func(t *testing.T) {
		s := newStore(t)
		var shown []*store.Agent
		record := func(cur *store.Agent) {
			if cur != nil {
				cur = cur.Clone()
			}
			shown = append(shown, cur)
		}
		// Absent: fn sees nil and creates the record.
		got, err := s.Update(ctx, "a", nil, func(cur *store.Agent) (*store.Agent, error) {
			record(cur)
			a := NewAgent("a")
			a.LastSeen = base
			return a, nil
		})
		if err != nil || got == nil || got.ID != "a" || shown[len(shown)-1] != nil {
			t.Fatalf("create: %+v, %v; fn saw %+v", got, err, shown)
		}
		// Present: fn sees the stored record and changes it.
		got, err = s.Update(ctx, "a", nil, func(cur *store.Agent) (*store.Agent, error) {
			record(cur)
			cur.Maintenance = true
			return cur, nil
		})
		if last := shown[len(shown)-1]; err != nil || !got.Maintenance || last == nil || last.Port != 9956 || !last.LastSeen.Equal(base) {
			t.Fatalf("modify: %+v, %v; fn saw %+v", got, err, last)
		}
		// fn refuses: its error comes back as is and nothing changes.
		refusal := errors.New("refused")
		if _, err := s.Update(ctx, "a", nil, func(cur *store.Agent) (*store.Agent, error) {
			cur.Port = 1
			return nil, refusal
		}); !errors.Is(err, refusal) {
			t.Fatalf("refusal: %v, want the fn's error", err)
		}
		if got := SortedList(t, s); len(got) != 1 || !got[0].Maintenance || got[0].Port != 9956 {
			t.Fatalf("after the refusal: %+v", got)
		}
		// A record under another id is refused.
		if _, err := s.Update(ctx, "a", nil, func(*store.Agent) (*store.Agent, error) { return NewAgent("b"), nil }); err == nil {
			t.Fatal("record for another id stored")
		}
		// nil deletes.
		if got, err := s.Update(ctx, "a", nil, func(*store.Agent) (*store.Agent, error) { return nil, nil }); err != nil || got != nil {
			t.Fatalf("delete: %+v, %v", got, err)
		}
		if got := SortedList(t, s); len(got) != 0 {
			t.Fatalf("after delete by update: %+v", got)
		}
	})
	t.Run("tombstone keeps what the agent may not change", func(t *testing.T) {
		s := newStore(t)
		a := NewAgent("a")
		a.LastSeen = base
		a.PinnedLabels = labels.FromStrings("role", "web")
		a.Maintenance = true
		a.CertNotAfter = base.Add(24 * time.Hour)
		a.PrevCertSerial, a.PrevCertNotAfter = "s-old", base.Add(time.Hour)
		if err := s.Put(ctx, a); err != nil {
			t.Fatal(err)
		}
		got, err := s.Update(ctx, "a", nil, func(cur *store.Agent) (*store.Agent, error) {
			cur.Deregistered = true
			return cur, nil
		})
		if err != nil || got == nil || !got.Deregistered {
			t.Fatalf("deregister: %+v, %v", got, err)
		}
		// Heartbeats batched before the deregistration do not undo it.
		if err := s.Touch(ctx, []store.Touch{{ID: "a", LastSeen: base.Add(time.Minute)}}); err != nil {
			t.Fatal(err)
		}
		check := func(t *testing.T, agents []store.Agent) {
			t.Helper()
			if len(agents) != 1 {
				t.Fatalf("want the tombstone, got %+v", agents)
			}
			g := agents[0]
			if !g.Deregistered || !g.Maintenance || g.PinnedLabels.Get("role") != "web" ||
				g.CertSerial != "s-a" || g.PrevCertSerial != "s-old" || !g.CertNotAfter.Equal(a.CertNotAfter) {
				t.Fatalf("tombstone lost something: %+v", g)
			}
		}
		check(t, SortedList(t, s))
		if reopen != nil {
			check(t, SortedList(t, reopen(t, s)))
		}
		// An operator revokes the tombstone; it stays one.
		got, err = s.Update(ctx, "a", nil, func(cur *store.Agent) (*store.Agent, error) {
			if !cur.Deregistered {
				return nil, errors.New("fn saw no tombstone")
			}
			cur.RevokedAt = base.Add(2 * time.Minute)
			return cur, nil
		})
		if err != nil || !got.Revoked() || !got.Deregistered {
			t.Fatalf("revoke the tombstone: %+v, %v", got, err)
		}
	})
	t.Run("update with a token claim", func(t *testing.T) {
		s := newStore(t)
		claim := &store.TokenClaim{ID: "j1", Expires: time.Now().Add(time.Hour)}
		create := func(id string) store.UpdateFunc {
			return func(*store.Agent) (*store.Agent, error) { return NewAgent(id), nil }
		}
		// A write that fails leaves the token unused.
		if _, err := s.Update(ctx, "first", claim, func(*store.Agent) (*store.Agent, error) { return nil, errors.New("refused") }); err == nil {
			t.Fatal("refusal ignored")
		}
		if _, err := s.Update(ctx, "a", claim, create("a")); err != nil {
			t.Fatalf("claim after a failed write: %v", err)
		}
		called := false
		_, err := s.Update(ctx, "b", claim, func(*store.Agent) (*store.Agent, error) { called = true; return NewAgent("b"), nil })
		if !errors.Is(err, store.ErrTokenUsed) || called {
			t.Fatalf("second claim: %v (fn called: %v), want ErrTokenUsed without calling fn", err, called)
		}
		if got := SortedList(t, s); len(got) != 1 || got[0].ID != "a" {
			t.Fatalf("stored after a reused claim: %+v", got)
		}
		var wins atomic.Int32
		var wg sync.WaitGroup
		race := &store.TokenClaim{ID: "j2", Expires: time.Now().Add(time.Hour)}
		for i := range 50 {
			wg.Go(func() {
				id := fmt.Sprintf("r%02d", i)
				_, err := s.Update(ctx, id, race, create(id))
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, store.ErrTokenUsed):
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d concurrent claims of one token succeeded, want 1", wins.Load())
		}
		if got := SortedList(t, s); len(got) != 2 {
			t.Fatalf("%d agents stored after the race, want a and the winner", len(got))
		}
	})
	t.Run("concurrent updates", func(t *testing.T) {
		s := newStore(t)
		if err := s.Put(ctx, NewAgent("a")); err != nil {
			t.Fatal(err)
		}
		// On etcd every conflict means another writer's update went in, so
		// with n writers none loses more than n-1 times: n must not exceed
		// the etcd store's maxUpdateAttempts (16), or a writer may rightly
		// give up.
		const n = 8
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				if _, err := s.Update(ctx, "a", nil, func(cur *store.Agent) (*store.Agent, error) {
					cur.Port++
					return cur, nil
				}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if got := SortedList(t, s); got[0].Port != 9956+n {
			t.Fatalf("port %d after %d concurrent increments, want %d: an update was lost", got[0].Port, n, 9956+n)
		}
	})
	t.Run("concurrent puts", func(t *testing.T) {
		s := newStore(t)
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() {
				if err := s.Put(ctx, NewAgent(fmt.Sprintf("a%02d", i))); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if got := SortedList(t, s); len(got) != 40 {
			t.Fatalf("%d agents after 40 concurrent puts", len(got))
		}
	})
}
