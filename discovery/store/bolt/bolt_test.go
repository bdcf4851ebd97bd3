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

package bolt

import (
	"context"
	"fmt"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/storetest"
)

func TestStore_Conformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := Open(filepath.Join(t.TempDir(), "registry.db"), Options{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	}, nil)
}

func TestBoltStore_Durability(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := storetest.NewAgent("a")
	want.LastSeen = time.Unix(1700000000, 0).UTC()
	want.RegisteredAt = want.LastSeen
	if err := s.Put(ctx, want); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path, Options{LockTimeout: 50 * time.Millisecond}); err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second open of a locked file: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got := storetest.SortedList(t, s)
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
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Put(ctx, storetest.NewAgent("good"))
	if err := s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketAgents).Put([]byte("bad"), []byte("{not json"))
	}); err != nil {
		t.Fatal(err)
	}
	got := storetest.SortedList(t, s)
	if len(got) != 1 || got[0].ID != "good" {
		t.Fatalf("list with a corrupt record: %+v", got)
	}
	s.Close()
}

func TestBoltStore_RefusesNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "registry.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = s.db.Update(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketMeta).Put(keySchema, []byte{0, 0, 0, 0, 0, 0, 0, 9})
	})
	s.Close()
	if _, err := Open(path, Options{}); err == nil || !strings.Contains(err.Error(), "schema") {
		t.Fatalf("newer schema: %v", err)
	}
}

func BenchmarkBoltPut(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "registry.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var n atomic.Int64
	b.SetParallelism(16) // concurrent registrations share commits
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := s.Put(context.Background(), storetest.NewAgent(fmt.Sprintf("a%d", n.Add(1)))); err != nil {
				b.Error(err)
			}
		}
	})
}

func BenchmarkBoltTouch10k(b *testing.B) {
	s, err := Open(filepath.Join(b.TempDir(), "registry.db"), Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	touches := make([]store.Touch, 10000)
	for i := range touches {
		id := fmt.Sprintf("a%05d", i)
		_ = s.Put(context.Background(), storetest.NewAgent(id))
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
			s, err := Open(filepath.Join(t.TempDir(), "registry.db"), Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			s.listBatchSize = batch
			for i := range 10 {
				if err := s.Put(ctx, storetest.NewAgent(fmt.Sprintf("a%02d", i))); err != nil {
					t.Fatal(err)
				}
			}
			got := storetest.SortedList(t, s)
			if len(got) != 10 {
				t.Fatalf("%d agents listed in batches of %d, want 10", len(got), batch)
			}
			for i, a := range got {
				if want := fmt.Sprintf("a%02d", i); a.ID != want {
					t.Fatalf("agent %d is %q, want %q", i, a.ID, want)
				}
			}
			if err := s.Put(ctx, storetest.NewAgent("after")); err != nil {
				t.Fatalf("put after List: %v", err)
			}
			if n := len(storetest.SortedList(t, s)); n != 11 {
				t.Fatalf("%d agents after one more put, want 11", n)
			}
		})
	}
}
