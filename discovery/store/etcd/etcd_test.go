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

package etcd

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/storetest"
	"github.com/baremetal-sd/baremetal_sd/internal/etcdtest"
)

// etcdWait bounds every wait for the test cluster.
const etcdWait = etcdtest.Wait

type etcdCluster = etcdtest.Cluster

// startEtcdCluster starts a real n-member etcd cluster for the test.
func startEtcdCluster(t testing.TB, n int) *etcdCluster { return etcdtest.Start(t, n) }

// openTestEtcdStore opens a store on the cluster under prefix; an empty
// prefix gets a fresh one.
func openTestEtcdStore(t testing.TB, c *etcdCluster, prefix string, opts Options) *Store {
	t.Helper()
	if prefix == "" {
		prefix = "/test-" + strings.ToLower(rand.Text()) + "/"
	}
	opts.Endpoints = c.Endpoints()
	opts.Prefix = prefix
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), etcdWait)
	defer cancel()
	s, err := Open(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// nextEvent returns the next event from ch, failing the test if none comes
// within etcdWait.
func nextEvent(t *testing.T, ch <-chan store.Event) store.Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatal("watch channel closed")
		}
		return ev
	case <-time.After(etcdWait):
		t.Fatalf("no event within %v", etcdWait)
	}
	return store.Event{}
}

// TestEtcdStore_Conformance runs the expectations every Store meets
// (TestStore_Conformance) against a three-member cluster.
func TestEtcdStore_Conformance(t *testing.T) {
	c := startEtcdCluster(t, 3)
	ctx := context.Background()
	newStore := func(t *testing.T) store.Store { return openTestEtcdStore(t, c, "", Options{}) }

	storetest.Run(t, newStore, func(t *testing.T, s store.Store) store.Store {
		return openTestEtcdStore(t, c, s.(*Store).opts.Prefix, Options{ReplicaID: "reopened"})
	})
	t.Run("corrupt records and blobs are skipped", func(t *testing.T) {
		s := newStore(t).(*Store)
		_ = s.Put(ctx, storetest.NewAgent("good"))
		cli := c.Client()
		for k, v := range map[string]string{
			s.agentsPrefix + "bad":            "{not json",
			s.agentsPrefix + "other":          `{"id":"mismatch"}`,
			s.lastSeenPrefix + "r/00":         "\x09garbage",
			s.lastSeenPrefix + "not-a-blob-k": "x",
		} {
			if _, err := cli.Put(ctx, k, v); err != nil {
				t.Fatal(err)
			}
		}
		if got := storetest.SortedList(t, s); len(got) != 1 || got[0].ID != "good" {
			t.Fatalf("list with corrupt entries: %+v", got)
		}
	})
}

// TestEtcdStore_Replicas checks that two stores on one prefix (two server
// replicas) see each other's changes through Watch and List, and not their
// own.
func TestEtcdStore_Replicas(t *testing.T) {
	c := startEtcdCluster(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openTestEtcdStore(t, c, "", Options{ReplicaID: "replica-a"})
	b := openTestEtcdStore(t, c, a.opts.Prefix, Options{ReplicaID: "replica-b"})
	for _, s := range []*Store{a, b} {
		if _, err := s.List(ctx); err != nil {
			t.Fatal(err)
		}
	}
	evA, evB := a.Watch(ctx), b.Watch(ctx)

	x := storetest.NewAgent("x")
	x.RegisteredAt = time.Unix(1700000000, 0)
	x.LastSeen = x.RegisteredAt
	if err := a.Put(ctx, x); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, evB); ev.Type != store.EventPut || !storetest.SameAgent(ev.Agent, *x) {
		t.Fatalf("b got %+v, want the put of x", ev)
	}

	if err := b.Put(ctx, storetest.NewAgent("y")); err != nil {
		t.Fatal(err)
	}
	if err := a.Put(ctx, storetest.NewAgent("z")); err != nil {
		t.Fatal(err)
	}
	// b's own put of y came first in etcd but is not delivered to b.
	if ev := nextEvent(t, evB); ev.Type != store.EventPut || ev.Agent.ID != "z" {
		t.Fatalf("b got %+v, want the put of z", ev)
	}
	if ev := nextEvent(t, evA); ev.Type != store.EventPut || ev.Agent.ID != "y" {
		t.Fatalf("a got %+v, want the put of y", ev)
	}

	seen := x.LastSeen.Add(time.Minute)
	if err := a.Touch(ctx, []store.Touch{{ID: "x", LastSeen: seen}}); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, evB); ev.Type != store.EventTouch || ev.Agent.ID != "x" || !ev.Agent.LastSeen.Equal(seen) {
		t.Fatalf("b got %+v, want the touch of x", ev)
	}
	got := storetest.SortedList(t, b)
	if len(got) != 3 || got[0].ID != "x" || !got[0].LastSeen.Equal(seen) {
		t.Fatalf("b lists %+v", got)
	}

	// A heartbeat through b moves the time further; List takes the newest
	// over both replicas' blobs.
	later := seen.Add(time.Minute)
	if err := b.Touch(ctx, []store.Touch{{ID: "x", LastSeen: later}}); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, evA); ev.Type != store.EventTouch || !ev.Agent.LastSeen.Equal(later) {
		t.Fatalf("a got %+v, want the touch of x through b", ev)
	}
	if got := storetest.SortedList(t, a); !got[0].LastSeen.Equal(later) {
		t.Fatalf("a lists x last seen %v, want %v", got[0].LastSeen, later)
	}

	if err := a.Delete(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, evB); ev.Type != store.EventDelete || ev.Agent.ID != "x" {
		t.Fatalf("b got %+v, want the delete of x", ev)
	}
	// a saw none of its own writes: its next event is b's next change.
	if err := b.Put(ctx, storetest.NewAgent("w")); err != nil {
		t.Fatal(err)
	}
	if ev := nextEvent(t, evA); ev.Type != store.EventPut || ev.Agent.ID != "w" {
		t.Fatalf("a got %+v, want the put of w", ev)
	}

	// A replica started later (a fresh process) lists everything, and a
	// Watch without a List starts with everything.
	c3 := openTestEtcdStore(t, c, a.opts.Prefix, Options{ReplicaID: "replica-c"})
	ev3 := c3.Watch(ctx)
	ids := map[string]bool{}
	for len(ids) < 3 {
		ev := nextEvent(t, ev3)
		if ev.Type == store.EventPut {
			ids[ev.Agent.ID] = true
		}
	}
	if !ids["y"] || !ids["z"] || !ids["w"] {
		t.Fatalf("watch without list delivered %v", ids)
	}
	if second := c3.Watch(ctx); second != nil {
		if _, ok := <-second; ok {
			t.Fatal("a second concurrent Watch delivered events")
		}
	}
}

// TestEtcdStore_OwnWriteOrdering checks that an event from another replica
// older than this replica's own write of the same agent is never delivered
// after that write: memory must not go back to the older record.
func TestEtcdStore_OwnWriteOrdering(t *testing.T) {
	c := startEtcdCluster(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openTestEtcdStore(t, c, "", Options{ReplicaID: "replica-a"})
	b := openTestEtcdStore(t, c, a.opts.Prefix, Options{ReplicaID: "replica-b"})
	if _, err := a.List(ctx); err != nil {
		t.Fatal(err)
	}
	evA := a.Watch(ctx)
	// Both replicas write the same agent concurrently, many times; what a
	// ends up with after the dust settles must be what etcd holds.
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			ag := storetest.NewAgent("same")
			ag.Port = 1000 + i
			if err := a.Put(ctx, ag); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			ag := storetest.NewAgent("same")
			ag.Port = 2000 + i
			if err := b.Put(ctx, ag); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	// A final marker write through b: once a sees it, every earlier event
	// has been delivered.
	if err := b.Put(ctx, storetest.NewAgent("marker")); err != nil {
		t.Fatal(err)
	}
	last := map[string]int{}
	for {
		ev := nextEvent(t, evA)
		if ev.Agent.ID == "marker" {
			break
		}
		if ev.Type == store.EventPut {
			if ev.Agent.Port < 2000 {
				t.Fatalf("a was delivered its own write (port %d)", ev.Agent.Port)
			}
			last[ev.Agent.ID] = ev.Agent.Port
		}
	}
	resp, err := c.Client().Get(ctx, a.agentsPrefix+"same")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatal(resp, err)
	}
	stored, _ := decodeAgentRecord("same", resp.Kvs[0].Value)
	// When b wrote last, a must have been told; when a did, a's own
	// acknowledged write is what its memory holds.
	if stored.Port >= 2000 && last["same"] != stored.Port {
		t.Fatalf("last event delivered to a has port %d, etcd holds %d", last["same"], stored.Port)
	}
}

// TestEtcdStore_TouchWritesOneKeyPerChangedShard checks the heartbeat
// batching: a flush writes one blob per shard with a moved time, in as few
// requests as etcd's limits allow, whatever the number of agents.
func TestEtcdStore_TouchWritesOneKeyPerChangedShard(t *testing.T) {
	c := startEtcdCluster(t, 3)
	ctx := context.Background()
	s := openTestEtcdStore(t, c, "", Options{ReplicaID: "replica-a"})
	cli := c.Client()

	// Register 3000 agents directly, many per request, then List so the
	// store knows them.
	const n = 3000
	ids := make([]string, n)
	var ops []clientv3.Op
	for i := range ids {
		ids[i] = fmt.Sprintf("agent-%05d", i)
		a := storetest.NewAgent(ids[i])
		a.LastSeen = time.Unix(1700000000, 0)
		data, _ := json.Marshal(a)
		ops = append(ops, clientv3.OpPut(s.agentsPrefix+ids[i], string(data)))
		if len(ops) == 100 || i == n-1 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	if _, err := s.List(ctx); err != nil {
		t.Fatal(err)
	}

	// writtenSince returns the blob keys of the replica written after rev.
	writtenSince := func(rev int64) int {
		t.Helper()
		resp, err := cli.Get(ctx, s.ownPrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for _, kv := range resp.Kvs {
			if kv.ModRevision > rev {
				k++
			}
		}
		return k
	}
	revision := func() int64 {
		t.Helper()
		resp, err := cli.Get(ctx, "rev")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	touchAll := func(at time.Time, which []string) {
		t.Helper()
		touches := make([]store.Touch, len(which))
		for i, id := range which {
			touches[i] = store.Touch{ID: id, LastSeen: at}
		}
		if err := s.Touch(ctx, touches); err != nil {
			t.Fatal(err)
		}
	}

	shards := map[int][]string{}
	for _, id := range ids {
		shards[etcdShardOf(id)] = append(shards[etcdShardOf(id)], id)
	}
	t1 := time.Unix(1700000100, 0)
	tests := []struct {
		name     string
		at       time.Time
		ids      []string
		keys     int
		requests uint64
	}{
		{"all agents", t1, ids, len(shards), uint64((len(shards) + etcdTxnOps - 1) / etcdTxnOps)},
		{"nothing moved", t1, ids, 0, 0},
		{"three agents of one shard", t1.Add(time.Second), shards[etcdShardOf(ids[0])][:3], 1, 1},
		{"one agent in each of two shards", t1.Add(2 * time.Second), []string{shards[etcdShardOf(ids[0])][0], shards[etcdShardOf(ids[1])][0]}, 2, 1},
	}
	if etcdShardOf(ids[0]) == etcdShardOf(ids[1]) {
		t.Fatal("test ids share a shard; pick others")
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rev := revision()
			before := s.Stats()
			touchAll(tc.at, tc.ids)
			after := s.Stats()
			if k := writtenSince(rev); k != tc.keys {
				t.Errorf("%d blob keys written, want %d", k, tc.keys)
			}
			if k := after.LastSeenKeysWritten - before.LastSeenKeysWritten; k != uint64(tc.keys) {
				t.Errorf("stats count %d blob keys, want %d", k, tc.keys)
			}
			if r := after.WriteRequests - before.WriteRequests; r > tc.requests+1 { // +1: the first flush grants the lease
				t.Errorf("%d write requests, want at most %d", r, tc.requests+1)
			}
		})
	}
	if len(shards) > etcdShards {
		t.Fatalf("%d shards", len(shards))
	}

	// Another replica reads every time.
	other := openTestEtcdStore(t, c, s.opts.Prefix, Options{ReplicaID: "replica-b"})
	got := storetest.SortedList(t, other)
	if len(got) != n {
		t.Fatalf("%d agents listed", len(got))
	}
	moved := map[string]time.Time{}
	for _, id := range shards[etcdShardOf(ids[0])][:3] {
		moved[id] = t1.Add(time.Second)
	}
	moved[shards[etcdShardOf(ids[0])][0]] = t1.Add(2 * time.Second)
	moved[shards[etcdShardOf(ids[1])][0]] = t1.Add(2 * time.Second)
	for _, a := range got {
		want, ok := moved[a.ID]
		if !ok {
			want = t1
		}
		if !a.LastSeen.Equal(want) {
			t.Fatalf("%s last seen %v, want %v", a.ID, a.LastSeen, want)
		}
	}

	// Deleted agents leave the blob the next time it is written.
	victim := shards[etcdShardOf(ids[0])][1]
	if err := s.Delete(ctx, victim); err != nil {
		t.Fatal(err)
	}
	touchAll(t1.Add(3*time.Second), shards[etcdShardOf(ids[0])][:1])
	resp, err := cli.Get(ctx, s.blobKey(etcdShardOf(ids[0])))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatal(resp, err)
	}
	_ = decodeLastSeen(resp.Kvs[0].Value, func(hash uint64, _ int64) {
		if hash == blobHash(victim) {
			t.Errorf("deleted agent %s still in its blob", victim)
		}
	})
	// The blobs hang on the replica's lease.
	if resp.Kvs[0].Lease == 0 {
		t.Error("blob without a lease")
	}
}

// TestEtcdStore_UpdateAcrossReplicas races read-modify-writes of one
// record, and registrations claiming one single-use token, through two
// replicas: no change is lost and a token is claimed once.
func TestEtcdStore_UpdateAcrossReplicas(t *testing.T) {
	c := startEtcdCluster(t, 3)
	ctx := context.Background()
	a := openTestEtcdStore(t, c, "", Options{ReplicaID: "replica-a"})
	b := openTestEtcdStore(t, c, a.opts.Prefix, Options{ReplicaID: "replica-b"})
	if err := a.Put(ctx, storetest.NewAgent("x")); err != nil {
		t.Fatal(err)
	}
	// Every conflict means another writer's update went in, so with n
	// writers none loses more than n-1 times: n must not exceed
	// maxUpdateAttempts, or a writer may rightly give up.
	const n = maxUpdateAttempts / 2
	var wg sync.WaitGroup
	for i := range n {
		s := []*Store{a, b}[i%2]
		wg.Go(func() {
			if _, err := s.Update(ctx, "x", nil, func(cur *store.Agent) (*store.Agent, error) {
				cur.Port++
				return cur, nil
			}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := storetest.SortedList(t, b); got[0].Port != 9956+n {
		t.Fatalf("port %d after %d increments through two replicas, want %d", got[0].Port, n, 9956+n)
	}

	// The race above may or may not overlap. Force the conflict path: b
	// writes the record while a's fn runs, between a's read and its
	// transaction, so a's compare fails and fn must run again on b's record.
	conflictsBefore := a.Stats().UpdateConflicts
	calls := 0
	got, err := a.Update(ctx, "x", nil, func(cur *store.Agent) (*store.Agent, error) {
		calls++
		if calls == 1 {
			if _, err := b.Update(ctx, "x", nil, func(cur *store.Agent) (*store.Agent, error) {
				cur.Status = "written by b"
				return cur, nil
			}); err != nil {
				t.Errorf("b's write in between: %v", err)
			}
		}
		cur.Maintenance = true
		return cur, nil
	})
	if err != nil {
		t.Fatalf("update that met a conflict: %v", err)
	}
	if calls != 2 {
		t.Errorf("fn ran %d times, want 2 (once more after the conflict)", calls)
	}
	if c := a.Stats().UpdateConflicts - conflictsBefore; c != 1 {
		t.Errorf("%d conflicts counted, want 1", c)
	}
	if got == nil || got.Status != "written by b" || !got.Maintenance {
		t.Errorf("after the conflict: %+v, want b's status and a's maintenance", got)
	}
	if stored := storetest.SortedList(t, b); stored[0].Status != "written by b" || !stored[0].Maintenance {
		t.Errorf("stored after the conflict: status %q maintenance %v, want both writes", stored[0].Status, stored[0].Maintenance)
	}

	exp := time.Now().Add(time.Hour)
	for round := range 5 {
		claim := &store.TokenClaim{ID: "jti-" + strconv.Itoa(round), Expires: exp}
		var wins atomic.Int32
		var wg sync.WaitGroup
		for i := range 20 {
			s := []*Store{a, b}[i%2]
			id := fmt.Sprintf("r%d-%d", round, i)
			wg.Go(func() {
				_, err := s.Update(ctx, id, claim, func(*store.Agent) (*store.Agent, error) { return storetest.NewAgent(id), nil })
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
			t.Fatalf("%s: %d claims succeeded, want 1", claim.ID, wins.Load())
		}
	}
	if got := storetest.SortedList(t, a); len(got) != 1+5 {
		t.Fatalf("%d records, want x and one per claimed token", len(got))
	}

	// Claims go away with their lease after the token expired; claims
	// expiring within one window share the lease.
	cli := c.Client()
	leaseOf := func(jti string) clientv3.LeaseID {
		t.Helper()
		resp, err := cli.Get(ctx, a.tokensPrefix+jti)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatal(resp, err)
		}
		return clientv3.LeaseID(resp.Kvs[0].Lease)
	}
	ttl, err := cli.TimeToLive(ctx, leaseOf("jti-0"))
	if err != nil {
		t.Fatal(err)
	}
	if until := int64(time.Until(exp) / time.Second); ttl.TTL < until || ttl.GrantedTTL > until+int64((claimLeaseWindow+2*time.Minute)/time.Second) {
		t.Fatalf("claim lease TTL %d (granted %d), want from %d to one window more", ttl.TTL, ttl.GrantedTTL, until)
	}
	// Two claims through each replica in one window: each replica grants
	// at most one lease for it (which replica won the rounds above is
	// chance, so they are not compared with these).
	for _, s := range []*Store{a, b} {
		for i := range 2 {
			id := fmt.Sprintf("y%d-%s", i, s.ReplicaID())
			if _, err := s.Update(ctx, id, &store.TokenClaim{ID: "same-window-" + id, Expires: exp.Add(time.Duration(i) * time.Second)}, func(*store.Agent) (*store.Agent, error) {
				return storetest.NewAgent(id), nil
			}); err != nil {
				t.Fatal(err)
			}
		}
		first, second := leaseOf("same-window-y0-"+s.ReplicaID()), leaseOf("same-window-y1-"+s.ReplicaID())
		if first != second && exp.Truncate(claimLeaseWindow).Equal(exp.Add(time.Second).Truncate(claimLeaseWindow)) {
			t.Errorf("%s: two claims in one expiry window took two leases", s.ReplicaID())
		}
	}
	if _, err := a.Update(ctx, "z", &store.TokenClaim{ID: "", Expires: exp}, func(*store.Agent) (*store.Agent, error) { return storetest.NewAgent("z"), nil }); err == nil {
		t.Fatal("empty token id accepted")
	}
}

// TestEtcdStore_SurvivesMemberLoss kills the leader: with two of three
// members left every operation still succeeds.
func TestEtcdStore_SurvivesMemberLoss(t *testing.T) {
	c := startEtcdCluster(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openTestEtcdStore(t, c, "", Options{ReplicaID: "replica-a"})
	b := openTestEtcdStore(t, c, a.opts.Prefix, Options{ReplicaID: "replica-b"})
	if err := a.Put(ctx, storetest.NewAgent("before")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.List(ctx); err != nil {
		t.Fatal(err)
	}
	evB := b.Watch(ctx)

	c.Kill(c.Leader())

	// Each operation retries through the election within its timeout.
	if err := a.Put(ctx, storetest.NewAgent("after")); err != nil {
		t.Fatal(err)
	}
	if err := a.Touch(ctx, []store.Touch{{ID: "before", LastSeen: time.Now()}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Update(ctx, "claimed", &store.TokenClaim{ID: "j", Expires: time.Now().Add(time.Hour)}, func(*store.Agent) (*store.Agent, error) {
		return storetest.NewAgent("claimed"), nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, "before"); err != nil {
		t.Fatal(err)
	}
	if err := a.Healthy(ctx); err != nil {
		t.Fatal(err)
	}
	want := []store.EventType{store.EventPut, store.EventTouch, store.EventPut, store.EventDelete}
	for _, typ := range want {
		if ev := nextEvent(t, evB); ev.Type != typ {
			t.Fatalf("b got %+v, want type %d", ev, typ)
		}
	}
	if got := storetest.SortedList(t, b); len(got) != 2 || got[0].ID != "after" || got[1].ID != "claimed" {
		t.Fatalf("b lists %+v", got)
	}
}

// TestEtcdStore_OutageAndRecovery stops every member: operations fail with
// ErrUnavailable instead of hanging, and once etcd is back the same store
// objects work again, the watch included.
func TestEtcdStore_OutageAndRecovery(t *testing.T) {
	c := startEtcdCluster(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openTestEtcdStore(t, c, "", Options{ReplicaID: "replica-a", RequestTimeout: time.Second})
	b := openTestEtcdStore(t, c, a.opts.Prefix, Options{ReplicaID: "replica-b"})
	if err := a.Put(ctx, storetest.NewAgent("x")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.List(ctx); err != nil {
		t.Fatal(err)
	}
	evB := b.Watch(ctx)

	c.KillAll()
	ops := map[string]func() error{
		"put":    func() error { return a.Put(ctx, storetest.NewAgent("y")) },
		"delete": func() error { return a.Delete(ctx, "x") },
		"touch":  func() error { return a.Touch(ctx, []store.Touch{{ID: "x", LastSeen: time.Now()}}) },
		"update": func() error {
			_, err := a.Update(ctx, "x", &store.TokenClaim{ID: "j", Expires: time.Now().Add(time.Hour)}, func(cur *store.Agent) (*store.Agent, error) { return cur, nil })
			return err
		},
		"healthy": func() error { return a.Healthy(ctx) },
		"list": func() error {
			lctx, lcancel := context.WithTimeout(ctx, 2*time.Second)
			defer lcancel()
			_, err := a.List(lctx)
			return err
		},
	}
	var wg sync.WaitGroup
	for name, op := range ops {
		wg.Go(func() {
			if err := op(); !errors.Is(err, store.ErrUnavailable) {
				t.Errorf("%s with etcd down: %v, want ErrUnavailable", name, err)
			}
		})
	}
	wg.Wait()

	c.StartAll()
	deadline := time.Now().Add(etcdWait)
	for {
		err := a.Put(ctx, storetest.NewAgent("y"))
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("store did not recover: %v", err)
		}
	}
	if err := a.Healthy(ctx); err != nil {
		t.Fatal(err)
	}
	// b's watch resumed: it delivers y (and possibly the failed writes'
	// effects, had any been committed, before it).
	for {
		ev := nextEvent(t, evB)
		if ev.Type == store.EventPut && ev.Agent.ID == "y" {
			break
		}
	}
	if err := a.Touch(ctx, []store.Touch{{ID: "x", LastSeen: time.Now()}}); err != nil {
		t.Fatal(err)
	}
}

// TestEtcdStore_ResyncAfterCompaction compacts etcd past a stopped watch:
// the next Watch reads everything again and delivers the differences.
func TestEtcdStore_ResyncAfterCompaction(t *testing.T) {
	c := startEtcdCluster(t, 3)
	ctx := context.Background()
	a := openTestEtcdStore(t, c, "", Options{ReplicaID: "replica-a"})
	b := openTestEtcdStore(t, c, a.opts.Prefix, Options{ReplicaID: "replica-b"})
	for _, id := range []string{"keep", "change", "drop"} {
		if err := a.Put(ctx, storetest.NewAgent(id)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.List(ctx); err != nil {
		t.Fatal(err)
	}
	wctx, stop := context.WithCancel(ctx)
	ch := b.Watch(wctx)
	stop()
	for range ch {
	}
	// While b does not watch: changes, then compaction of their history.
	changed := storetest.NewAgent("change")
	changed.Port = 4242
	if err := a.Put(ctx, changed); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(ctx, "drop"); err != nil {
		t.Fatal(err)
	}
	if err := a.Put(ctx, storetest.NewAgent("new")); err != nil {
		t.Fatal(err)
	}
	if err := a.Touch(ctx, []store.Touch{{ID: "keep", LastSeen: time.Unix(1800000000, 0)}}); err != nil {
		t.Fatal(err)
	}
	cli := c.Client()
	resp, err := cli.Get(ctx, "rev")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}

	wctx, stop = context.WithCancel(ctx)
	defer stop()
	ch = b.Watch(wctx)
	got := map[string]store.Event{}
	for len(got) < 4 {
		ev := nextEvent(t, ch)
		got[fmt.Sprintf("%d/%s", ev.Type, ev.Agent.ID)] = ev
	}
	if ev, ok := got[fmt.Sprintf("%d/change", store.EventPut)]; !ok || ev.Agent.Port != 4242 {
		t.Errorf("no put of the changed agent: %v", got)
	}
	if _, ok := got[fmt.Sprintf("%d/new", store.EventPut)]; !ok {
		t.Errorf("no put of the new agent: %v", got)
	}
	if _, ok := got[fmt.Sprintf("%d/drop", store.EventDelete)]; !ok {
		t.Errorf("no delete of the dropped agent: %v", got)
	}
	if _, ok := got[fmt.Sprintf("%d/keep", store.EventTouch)]; !ok {
		t.Errorf("no touch of the kept agent: %v", got)
	}
	if _, ok := got[fmt.Sprintf("%d/keep", store.EventPut)]; ok {
		t.Errorf("unchanged agent delivered again: %v", got)
	}
	if b.Stats().Resyncs != 1 {
		t.Errorf("%d resyncs, want 1", b.Stats().Resyncs)
	}
}

func TestEtcdStore_Options(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"no endpoints", Options{}, "no endpoints"},
		{"bad replica id", Options{Endpoints: []string{"http://127.0.0.1:1"}, ReplicaID: "a/b"}, "replica id"},
		{"long replica id", Options{Endpoints: []string{"http://127.0.0.1:1"}, ReplicaID: strings.Repeat("r", maxReplicaIDLen+1)}, "replica id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := Open(ctx, tc.opts); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one about %q", err, tc.want)
			}
		})
	}
	host, _ := os.Hostname()
	if id, err := DefaultReplicaID(); err != nil || id != host {
		t.Fatalf("default replica id %q, %v; want the hostname %q", id, err, host)
	}
}

func TestLastSeenBlob_RoundTrip(t *testing.T) {
	const ms = int64(time.Millisecond)
	const maxHash = 1<<blobHashBits - 1
	tests := [][]lastSeenEntry{
		{{hash: 0, ns: 0}},
		{{hash: 7, ns: 1700000000000 * ms}, {hash: 3, ns: 1700000000001 * ms}, {hash: 900000, ns: 1600000000000 * ms}},
		{{hash: maxHash, ns: (math.MaxInt64 / ms) * ms}, {hash: 2, ns: 0}},
		// A collision: both entries survive.
		{{hash: 5, ns: 1 * ms}, {hash: 5, ns: 2 * ms}},
	}
	for i, entries := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			want := slices.Clone(entries)
			slices.SortFunc(want, compareLastSeen)
			var got []lastSeenEntry
			if err := decodeLastSeen(encodeLastSeen(entries), func(h uint64, ns int64) { got = append(got, lastSeenEntry{h, ns}) }); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("got %v, want %v", got, want)
			}
		})
	}
	// Times keep millisecond precision.
	got := int64(0)
	_ = decodeLastSeen(encodeLastSeen([]lastSeenEntry{{hash: 1, ns: 1700000000123456789}}), func(_ uint64, ns int64) { got = ns })
	if got != 1700000000123000000 {
		t.Errorf("time %d after a round trip", got)
	}
	valid := encodeLastSeen([]lastSeenEntry{{hash: 5, ns: 5 * ms}})
	tooBig := binary.AppendUvarint([]byte{1, 1, 0}, maxHash+1)
	for _, bad := range [][]byte{
		nil,
		{9},             // unknown version
		{1},             // no count
		{1, 200},        // truncated count
		{1, 1, 2},       // count beyond the blob
		{1, 1, 5, 1, 6}, // older than the epoch
		append(tooBig, 0),
		append(slices.Clone(valid), 0),
	} {
		if err := decodeLastSeen(bad, func(uint64, int64) {}); err == nil {
			t.Errorf("blob %x accepted", bad)
		}
	}
}

func TestHashIndex_Collisions(t *testing.T) {
	x := newHashIndex(0)
	h := blobHash("a")
	// Force a collision by hand: the index only sees ids through blobHash,
	// so put a second id under the same hash directly.
	x.add("a")
	x.more[h] = append(x.more[h], "b")
	var got []string
	x.each(h, func(id string) { got = append(got, id) })
	if !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("each: %v", got)
	}
	x.first[h] = "a"
	x.remove("a")
	got = nil
	x.each(h, func(id string) { got = append(got, id) })
	if !slices.Equal(got, []string{"b"}) || len(x.more) != 0 {
		t.Fatalf("after removing a: %v, more %v", got, x.more)
	}
	x.add("c")
	x.remove("c")
	x.remove("never added")
	if len(x.first) != 1 {
		t.Fatalf("index %v", x.first)
	}
}

// FuzzDecodeLastSeen feeds arbitrary blobs (they come from etcd, over the
// network) to the decoder: it must not panic, and whatever it accepts must
// survive a round trip.
func FuzzDecodeLastSeen(f *testing.F) {
	f.Add(encodeLastSeen([]lastSeenEntry{{hash: 3, ns: 1700000000000000000}, {hash: 9, ns: 1600000000000000000}}))
	f.Add([]byte{1, 0, 0})
	f.Add([]byte{1, 1, 255, 255, 255, 255, 15, 1, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		var entries []lastSeenEntry
		prev := uint64(0)
		if err := decodeLastSeen(b, func(hash uint64, ns int64) {
			if hash < prev || hash >= 1<<blobHashBits || ns < 0 {
				t.Fatalf("decoded bad entry %d %d after %d", hash, ns, prev)
			}
			prev = hash
			entries = append(entries, lastSeenEntry{hash, ns})
		}); err != nil {
			return
		}
		var again []lastSeenEntry
		if err := decodeLastSeen(encodeLastSeen(slices.Clone(entries)), func(hash uint64, ns int64) {
			again = append(again, lastSeenEntry{hash, ns})
		}); err != nil {
			t.Fatal(err)
		}
		// Entries sharing a hash may come back in another order.
		slices.SortFunc(entries, compareLastSeen)
		if !slices.Equal(entries, again) {
			t.Fatalf("round trip: %v != %v", entries, again)
		}
	})
}

// TestEtcdStore_EventQueue pushes from several goroutines while a slow
// consumer reads: every event arrives once and intact.
func TestEtcdStore_EventQueue(t *testing.T) {
	s := &Store{}
	q := &eventQueue{wake: make(chan struct{}, 1)}
	out := make(chan store.Event) // unbuffered: the pump waits on every send
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.pump(ctx, q, out)
	}()
	const pushers, each = 4, 2000
	var wg sync.WaitGroup
	for p := range pushers {
		wg.Go(func() {
			for i := range each {
				q.push(store.Event{Type: store.EventPut, Agent: store.Agent{ID: fmt.Sprintf("%d-%d", p, i), Port: i}})
				if i%7 == 0 {
					// Let the pump run dry now and then: it then swaps
					// buffers while pushers are between bursts.
					runtime.Gosched()
				}
			}
		})
	}
	seen := make(map[string]bool, pushers*each)
	next := make([]int, pushers)
	for len(seen) < pushers*each {
		ev := nextEvent(t, out)
		var p, i int
		if _, err := fmt.Sscanf(ev.Agent.ID, "%d-%d", &p, &i); err != nil || ev.Agent.Port != i || p < 0 || p >= pushers {
			t.Fatalf("corrupt event %+v", ev)
		}
		if seen[ev.Agent.ID] {
			t.Fatalf("event %s delivered twice", ev.Agent.ID)
		}
		if i != next[p] {
			t.Fatalf("events of pusher %d out of order: got %d, want %d", p, i, next[p])
		}
		next[p]++
		seen[ev.Agent.ID] = true
	}
	wg.Wait()
	cancel()
	<-done
}

// populateEtcd writes n agent records straight into etcd, many per request,
// and returns their ids.
func populateEtcd(tb testing.TB, c *etcdCluster, s *Store, n int) []string {
	tb.Helper()
	cli := c.Client()
	ctx := context.Background()
	ids := make([]string, n)
	var ops []clientv3.Op
	for i := range ids {
		ids[i] = strings.ToLower(rand.Text()) // the shape of real agent ids
		a := storetest.NewAgent(ids[i])
		a.LastSeen = time.Unix(1700000000, 0)
		data, err := json.Marshal(a)
		if err != nil {
			tb.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(s.agentsPrefix+ids[i], string(data)))
		if len(ops) == 100 || i == n-1 {
			if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
				tb.Fatal(err)
			}
			ops = ops[:0]
		}
	}
	return ids
}

// BenchmarkEtcdStore_Flush100k is one heartbeat flush of 100,000 agents
// through one replica, every agent's time moved: the worst case, since a
// registry flush only carries the agents that heartbeated since the last.
func BenchmarkEtcdStore_Flush100k(b *testing.B) {
	c := startEtcdCluster(b, 3)
	s := openTestEtcdStore(b, c, "", Options{ReplicaID: "bench"})
	ids := populateEtcd(b, c, s, 100000)
	if _, err := s.List(context.Background()); err != nil {
		b.Fatal(err)
	}
	touches := make([]store.Touch, len(ids))
	for i, id := range ids {
		touches[i].ID = id
	}
	before := s.Stats()
	base := time.Now()
	i := 0
	for b.Loop() {
		i++
		for j := range touches {
			// Heartbeats spread over a 75s interval, as a fleet's are.
			touches[j].LastSeen = base.Add(time.Duration(i)*time.Second + time.Duration(j%75000)*time.Millisecond)
		}
		if err := s.Touch(context.Background(), touches); err != nil {
			b.Fatal(err)
		}
	}
	after := s.Stats()
	n := float64(i)
	b.ReportMetric(float64(after.WriteRequests-before.WriteRequests)/n, "requests/flush")
	b.ReportMetric(float64(after.LastSeenKeysWritten-before.LastSeenKeysWritten)/n, "keys/flush")
	b.ReportMetric(float64(after.BytesWritten-before.BytesWritten)/n, "bytes/flush")
}

// BenchmarkEtcdStore_Convergence is the time from a registration through
// one replica until the other replica's watch delivers it.
func BenchmarkEtcdStore_Convergence(b *testing.B) {
	c := startEtcdCluster(b, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	a := openTestEtcdStore(b, c, "", Options{ReplicaID: "a"})
	other := openTestEtcdStore(b, c, a.opts.Prefix, Options{ReplicaID: "b"})
	if _, err := other.List(ctx); err != nil {
		b.Fatal(err)
	}
	events := other.Watch(ctx)
	i := 0
	for b.Loop() {
		i++
		id := fmt.Sprintf("agent-%d", i)
		if err := a.Put(ctx, storetest.NewAgent(id)); err != nil {
			b.Fatal(err)
		}
		for ev := range events {
			if ev.Agent.ID == id {
				break
			}
		}
	}
}

// TestEtcdStore_ReplicaID: two running processes cannot share a replica
// id; a replica that stopped or crashed gives its id back, at once or when
// its presence lease ends.
func TestEtcdStore_ReplicaID(t *testing.T) {
	c := startEtcdCluster(t, 1)
	ctx := context.Background()
	short := Options{ReplicaID: "r", LivenessTTL: 2 * time.Second}
	a := openTestEtcdStore(t, c, "", short)
	if _, err := a.List(ctx); err != nil {
		t.Fatal(err)
	}
	if !a.LiveSince().IsZero() {
		t.Errorf("first replica: LiveSince %v, want zero", a.LiveSince())
	}

	// A second process with the same id waits out a crashed holder's
	// lease, then refuses: this holder keeps its lease alive.
	started := time.Now()
	dup := openTestEtcdStore(t, c, a.opts.Prefix, short)
	_, err := dup.List(ctx)
	if !errors.Is(err, errReplicaIDInUse) || !strings.Contains(err.Error(), "--etcd.replica-id") {
		t.Fatalf("second process with the same id: %v, want errReplicaIDInUse naming --etcd.replica-id", err)
	}
	if waited := time.Since(started); waited < 2*time.Second {
		t.Errorf("refused after %v, before a crashed holder's lease could have ended", waited)
	}

	// Another id starts and learns since when a has been running.
	b := openTestEtcdStore(t, c, a.opts.Prefix, Options{ReplicaID: "b"})
	if _, err := b.List(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := b.LiveSince(), time.UnixMilli(started.UnixMilli()); got.IsZero() || got.After(want) {
		t.Errorf("b: LiveSince %v, want a's start, before %v", got, want)
	}

	// A stopped replica releases its id at once.
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	started = time.Now()
	again := openTestEtcdStore(t, c, a.opts.Prefix, short)
	if _, err := again.List(ctx); err != nil {
		t.Fatalf("restart after a clean stop: %v", err)
	}
	if waited := time.Since(started); waited > time.Second {
		t.Errorf("restart after a clean stop waited %v", waited)
	}

	// A crashed one leaves its presence on a lease nobody renews: the next
	// process with its id waits for that lease, then starts.
	cli := c.Client()
	lease, err := cli.Grant(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, a.opts.Prefix+"replicas/crashed", `{"instance":"dead","since_ms":1}`, clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	started = time.Now()
	after := openTestEtcdStore(t, c, a.opts.Prefix, Options{ReplicaID: "crashed"})
	if _, err := after.List(ctx); err != nil {
		t.Fatalf("restart after a crash: %v", err)
	}
	if waited := time.Since(started); waited < time.Second {
		t.Errorf("restart after a crash waited only %v for the old lease", waited)
	}
}
