package discovery

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"
	bolt "go.etcd.io/bbolt"
)

// storeImpls are the stores every conformance test runs against.
func storeImpls(*testing.T) map[string]func(t *testing.T) Store {
	return map[string]func(t *testing.T) Store{
		"memory": func(*testing.T) Store { return NewMemoryStore() },
		"bolt": func(t *testing.T) Store {
			s, err := OpenBoltStore(filepath.Join(t.TempDir(), "registry.db"), BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
	}
}

func sortedList(t *testing.T, s Store) []Agent {
	t.Helper()
	agents, err := s.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	sort.Slice(agents, func(i, j int) bool { return agents[i].ID < agents[j].ID })
	return agents
}

func TestStore_Conformance(t *testing.T) {
	for name, newStore := range storeImpls(t) {
		t.Run(name, func(t *testing.T) { testStoreConformance(t, newStore, nil) })
	}
}

// testStoreConformance is what every Store must do. reopen, when not nil,
// opens a second store on the data of the first.
func testStoreConformance(t *testing.T, newStore func(*testing.T) Store, reopen func(*testing.T, Store) Store) {
	ctx := context.Background()
	base := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	t.Run("put, replace, list", func(t *testing.T) {
		s := newStore(t)
		a := testAgent("a")
		a.LastSeen = base
		a.RegisteredAt = base
		if err := s.Put(ctx, a); err != nil {
			t.Fatal(err)
		}
		a.Exporters[0].Name = "mutated after put"
		got := sortedList(t, s)
		if len(got) != 1 || got[0].Labels.Get("role") != "web" || got[0].Exporters[0].Name != "node" || !got[0].LastSeen.Equal(base) {
			t.Fatalf("list %+v", got)
		}
		b := testAgent("a")
		b.Port = 1234
		b.LastSeen = base
		if err := s.Put(ctx, b); err != nil {
			t.Fatal(err)
		}
		got = sortedList(t, s)
		if len(got) != 1 || got[0].Port != 1234 {
			t.Fatalf("replace: %+v", got)
		}
		if !sameAgent(got[0], *b) {
			t.Fatalf("round trip\n got %+v\nwant %+v", got[0], *b)
		}
		got[0].Exporters[0].Name = "mutated after list"
		if again := sortedList(t, s); again[0].Exporters[0].Name != "node" {
			t.Fatal("list returns records aliasing the store")
		}
	})
	t.Run("delete is idempotent", func(t *testing.T) {
		s := newStore(t)
		_ = s.Put(ctx, testAgent("a"))
		for range 2 {
			if err := s.Delete(ctx, "a"); err != nil {
				t.Fatal(err)
			}
		}
		if got := sortedList(t, s); len(got) != 0 {
			t.Fatalf("deleted agent listed: %+v", got)
		}
	})
	t.Run("touch", func(t *testing.T) {
		s := newStore(t)
		a := testAgent("a")
		a.LastSeen = base
		_ = s.Put(ctx, a)
		_ = s.Put(ctx, testAgent("gone"))
		_ = s.Delete(ctx, "gone")
		touches := []Touch{{ID: "a", LastSeen: base.Add(time.Minute)}, {ID: "unknown", LastSeen: base}, {ID: "gone", LastSeen: base}}
		if err := s.Touch(ctx, touches); err != nil {
			t.Fatal(err)
		}
		got := sortedList(t, s)
		if len(got) != 1 || got[0].ID != "a" || !got[0].LastSeen.Equal(base.Add(time.Minute)) {
			t.Fatalf("after touch: %+v", got)
		}
		_ = s.Touch(ctx, []Touch{{ID: "a", LastSeen: base}})
		if got := sortedList(t, s); !got[0].LastSeen.Equal(base.Add(time.Minute)) {
			t.Fatalf("older touch moved LastSeen to %v", got[0].LastSeen)
		}
		if reopen == nil {
			return
		}
		// A fresh store on the same data (a restart, another replica)
		// reads the same.
		if got := sortedList(t, reopen(t, s)); len(got) != 1 || !got[0].LastSeen.Equal(base.Add(time.Minute)) {
			t.Fatalf("fresh store after touch: %+v", got)
		}
	})
	t.Run("update", func(t *testing.T) {
		s := newStore(t)
		var shown []*Agent
		record := func(cur *Agent) {
			if cur != nil {
				cur = cur.clone()
			}
			shown = append(shown, cur)
		}
		// Absent: fn sees nil and creates the record.
		got, err := s.Update(ctx, "a", nil, func(cur *Agent) (*Agent, error) {
			record(cur)
			a := testAgent("a")
			a.LastSeen = base
			return a, nil
		})
		if err != nil || got == nil || got.ID != "a" || shown[len(shown)-1] != nil {
			t.Fatalf("create: %+v, %v; fn saw %+v", got, err, shown)
		}
		// Present: fn sees the stored record and changes it.
		got, err = s.Update(ctx, "a", nil, func(cur *Agent) (*Agent, error) {
			record(cur)
			cur.Maintenance = true
			return cur, nil
		})
		if last := shown[len(shown)-1]; err != nil || !got.Maintenance || last == nil || last.Port != 9956 || !last.LastSeen.Equal(base) {
			t.Fatalf("modify: %+v, %v; fn saw %+v", got, err, last)
		}
		// fn refuses: its error comes back as is and nothing changes.
		refusal := errors.New("refused")
		if _, err := s.Update(ctx, "a", nil, func(cur *Agent) (*Agent, error) {
			cur.Port = 1
			return nil, refusal
		}); !errors.Is(err, refusal) {
			t.Fatalf("refusal: %v, want the fn's error", err)
		}
		if got := sortedList(t, s); len(got) != 1 || !got[0].Maintenance || got[0].Port != 9956 {
			t.Fatalf("after the refusal: %+v", got)
		}
		// A record under another id is refused.
		if _, err := s.Update(ctx, "a", nil, func(*Agent) (*Agent, error) { return testAgent("b"), nil }); err == nil {
			t.Fatal("record for another id stored")
		}
		// nil deletes.
		if got, err := s.Update(ctx, "a", nil, func(*Agent) (*Agent, error) { return nil, nil }); err != nil || got != nil {
			t.Fatalf("delete: %+v, %v", got, err)
		}
		if got := sortedList(t, s); len(got) != 0 {
			t.Fatalf("after delete by update: %+v", got)
		}
	})
	t.Run("tombstone keeps what the agent may not change", func(t *testing.T) {
		s := newStore(t)
		a := testAgent("a")
		a.LastSeen = base
		a.PinnedLabels = labels.FromStrings("role", "web")
		a.Maintenance = true
		a.CertNotAfter = base.Add(24 * time.Hour)
		a.PrevCertSerial, a.PrevCertNotAfter = "s-old", base.Add(time.Hour)
		if err := s.Put(ctx, a); err != nil {
			t.Fatal(err)
		}
		got, err := s.Update(ctx, "a", nil, func(cur *Agent) (*Agent, error) {
			cur.Deregistered = true
			return cur, nil
		})
		if err != nil || got == nil || !got.Deregistered {
			t.Fatalf("deregister: %+v, %v", got, err)
		}
		// Heartbeats batched before the deregistration do not undo it.
		if err := s.Touch(ctx, []Touch{{ID: "a", LastSeen: base.Add(time.Minute)}}); err != nil {
			t.Fatal(err)
		}
		check := func(t *testing.T, agents []Agent) {
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
		check(t, sortedList(t, s))
		if reopen != nil {
			check(t, sortedList(t, reopen(t, s)))
		}
		// An operator revokes the tombstone; it stays one.
		got, err = s.Update(ctx, "a", nil, func(cur *Agent) (*Agent, error) {
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
		claim := &TokenClaim{ID: "j1", Expires: time.Now().Add(time.Hour)}
		create := func(id string) UpdateFunc {
			return func(*Agent) (*Agent, error) { return testAgent(id), nil }
		}
		// A write that fails leaves the token unused.
		if _, err := s.Update(ctx, "first", claim, func(*Agent) (*Agent, error) { return nil, errors.New("refused") }); err == nil {
			t.Fatal("refusal ignored")
		}
		if _, err := s.Update(ctx, "a", claim, create("a")); err != nil {
			t.Fatalf("claim after a failed write: %v", err)
		}
		called := false
		_, err := s.Update(ctx, "b", claim, func(*Agent) (*Agent, error) { called = true; return testAgent("b"), nil })
		if !errors.Is(err, ErrTokenUsed) || called {
			t.Fatalf("second claim: %v (fn called: %v), want ErrTokenUsed without calling fn", err, called)
		}
		if got := sortedList(t, s); len(got) != 1 || got[0].ID != "a" {
			t.Fatalf("stored after a reused claim: %+v", got)
		}
		var wins atomic.Int32
		var wg sync.WaitGroup
		race := &TokenClaim{ID: "j2", Expires: time.Now().Add(time.Hour)}
		for i := range 50 {
			wg.Go(func() {
				id := fmt.Sprintf("r%02d", i)
				_, err := s.Update(ctx, id, race, create(id))
				switch {
				case err == nil:
					wins.Add(1)
				case !errors.Is(err, ErrTokenUsed):
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if wins.Load() != 1 {
			t.Fatalf("%d concurrent claims of one token succeeded, want 1", wins.Load())
		}
		if got := sortedList(t, s); len(got) != 2 {
			t.Fatalf("%d agents stored after the race, want a and the winner", len(got))
		}
	})
	t.Run("concurrent updates", func(t *testing.T) {
		s := newStore(t)
		if err := s.Put(ctx, testAgent("a")); err != nil {
			t.Fatal(err)
		}
		// On etcd every conflict means another writer's update went in, so
		// with n writers none loses more than n-1 times: n must not exceed
		// maxUpdateAttempts, or a writer may rightly give up.
		const n = maxUpdateAttempts / 2
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				if _, err := s.Update(ctx, "a", nil, func(cur *Agent) (*Agent, error) {
					cur.Port++
					return cur, nil
				}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if got := sortedList(t, s); got[0].Port != 9956+n {
			t.Fatalf("port %d after %d concurrent increments, want %d: an update was lost", got[0].Port, n, 9956+n)
		}
	})
	t.Run("concurrent puts", func(t *testing.T) {
		s := newStore(t)
		var wg sync.WaitGroup
		for i := range 40 {
			wg.Go(func() {
				if err := s.Put(ctx, testAgent(fmt.Sprintf("a%02d", i))); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if got := sortedList(t, s); len(got) != 40 {
			t.Fatalf("%d agents after 40 concurrent puts", len(got))
		}
	})
}

func TestBoltStore_Durability(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := OpenBoltStore(path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := testAgent("a")
	want.LastSeen = time.Unix(1700000000, 0).UTC()
	want.RegisteredAt = want.LastSeen
	if err := s.Put(ctx, want); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenBoltStore(path, BoltOptions{LockTimeout: 50 * time.Millisecond}); err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open of a locked file: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = OpenBoltStore(path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := sortedList(t, s)
	if len(got) != 1 {
		t.Fatalf("after reopen: %+v", got)
	}
	got[0].LastSeen = got[0].LastSeen.UTC()
	got[0].RegisteredAt = got[0].RegisteredAt.UTC()
	if !reflect.DeepEqual(&got[0], want) {
		t.Fatalf("after reopen\n got %+v\nwant %+v", got[0], *want)
	}
}

func TestBoltStore_CorruptRecordSkipped(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := OpenBoltStore(path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Put(ctx, testAgent("good"))
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketAgents).Put([]byte("bad"), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	got := sortedList(t, s)
	if len(got) != 1 || got[0].ID != "good" {
		t.Fatalf("list with a corrupt record: %+v", got)
	}
	s.Close()
}

func TestBoltStore_RefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := OpenBoltStore(path, BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, []byte{0, 0, 0, 0, 0, 0, 0, 9})
	})
	s.Close()
	if _, err := OpenBoltStore(path, BoltOptions{}); err == nil || !strings.Contains(err.Error(), "schema") {
		t.Fatalf("newer schema: %v", err)
	}
}

func BenchmarkBoltPut(b *testing.B) {
	s, err := OpenBoltStore(filepath.Join(b.TempDir(), "registry.db"), BoltOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var n atomic.Int64
	b.SetParallelism(16) // concurrent registrations share commits
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.Put(context.Background(), testAgent(fmt.Sprintf("a%d", n.Add(1)))); err != nil {
				b.Error(err)
			}
		}
	})
}

func BenchmarkBoltTouch10k(b *testing.B) {
	s, err := OpenBoltStore(filepath.Join(b.TempDir(), "registry.db"), BoltOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	touches := make([]Touch, 10000)
	for i := range touches {
		id := fmt.Sprintf("a%05d", i)
		_ = s.Put(context.Background(), testAgent(id))
		touches[i].ID = id
	}
	for b.Loop() {
		now := time.Now()
		for i := range touches {
			touches[i].LastSeen = now
		}
		if err := s.Touch(context.Background(), touches); err != nil {
			b.Fatal(err)
		}
	}
}

// TestBoltStore_ListInBatches: List reads the file in batches, reopening it
// between them, and loses or repeats no record at the batch edges; the
// store works on after it.
func TestBoltStore_ListInBatches(t *testing.T) {
	ctx := context.Background()
	for _, batch := range []int{1, 3, 10, 11} {
		t.Run(fmt.Sprint(batch), func(t *testing.T) {
			s, err := OpenBoltStore(filepath.Join(t.TempDir(), "registry.db"), BoltOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			s.listBatchSize = batch
			for i := range 10 {
				if err := s.Put(ctx, testAgent(fmt.Sprintf("a%02d", i))); err != nil {
					t.Fatal(err)
				}
			}
			got := sortedList(t, s)
			if len(got) != 10 {
				t.Fatalf("%d agents listed in batches of %d, want 10", len(got), batch)
			}
			for i, a := range got {
				if want := fmt.Sprintf("a%02d", i); a.ID != want {
					t.Fatalf("agent %d is %q, want %q", i, a.ID, want)
				}
			}
			if err := s.Put(ctx, testAgent("after")); err != nil {
				t.Fatalf("put after List: %v", err)
			}
			if n := len(sortedList(t, s)); n != 11 {
				t.Fatalf("%d agents after one more put, want 11", n)
			}
		})
	}
}
