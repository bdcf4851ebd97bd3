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
	t.Run("claim token once", func(t *testing.T) {
		s := newStore(t)
		exp := time.Now().Add(time.Hour)
		if err := s.ClaimToken(ctx, "j1", exp); err != nil {
			t.Fatal(err)
		}
		if err := s.ClaimToken(ctx, "j1", exp); !errors.Is(err, ErrTokenUsed) {
			t.Fatalf("second claim: %v, want ErrTokenUsed", err)
		}
		var wins atomic.Int32
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() {
				err := s.ClaimToken(ctx, "j2", exp)
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
