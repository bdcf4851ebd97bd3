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
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// List implements Store. It reads a consistent snapshot (one revision) of
// the records and blobs; the next Watch starts after it. While etcd cannot
// be reached it retries until ctx ends, so a server started before etcd
// comes up waits for it.
func (s *Store) List(ctx context.Context) ([]store.Agent, error) {
	bo := newEtcdBackoff(100*time.Millisecond, 5*time.Second)
	for {
		// The first List takes the replica id: from here on this process
		// records heartbeats under it.
		err := s.claimReplica(ctx)
		if errors.Is(err, errReplicaIDInUse) {
			return nil, err
		}
		var agents []store.Agent
		if err == nil {
			agents, err = s.list(ctx)
		}
		if err == nil {
			return agents, nil
		}
		s.logger.Warn("Reading the registry from etcd failed; retrying", "err", err)
		if !bo.wait(ctx) {
			return nil, err
		}
	}
}

func (s *Store) list(ctx context.Context) ([]store.Agent, error) {
	snap, err := s.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]store.Agent, 0, len(snap.agents))
	for _, r := range snap.agents {
		a := r.agent
		if ns, ok := snap.lastSeen[a.ID]; ok && ns > a.LastSeen.UnixNano() {
			a.LastSeen = time.Unix(0, ns)
		}
		out = append(out, a)
	}

	s.replicaMu.Lock()
	s.replica.liveSince = snap.liveSince
	s.replicaMu.Unlock()

	// Times this replica id wrote before (a restart) are kept, or the next
	// flush would drop them.
	s.touchMu.Lock()
	for id, ns := range snap.ownSeen {
		sh := &s.own[etcdShardOf(id)]
		if sh.seen == nil {
			sh.seen = make(map[string]int64)
		}
		if ns > sh.seen[id] {
			sh.seen[id] = ns
		}
	}
	s.touchMu.Unlock()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.watcher != nil {
		// The running watch delivers everything after its own revision;
		// only raise what we know.
		for _, r := range snap.agents {
			e := s.entryLocked(r.agent.ID)
			if e.inflight == 0 && r.rev > e.rev {
				e.rev, e.deleted = r.rev, false
			}
		}
		return out, nil
	}
	old := s.mirror
	s.mirror = make(map[string]*mirrorEntry, len(snap.agents))
	s.byHash = newHashIndex(len(snap.agents))
	for id, e := range old {
		// Writes in flight or newer than the snapshot stay known.
		if e.inflight > 0 || e.rev > snap.rev {
			s.mirror[id] = e
			s.byHash.add(id)
		}
	}
	for _, r := range snap.agents {
		e := s.entryLocked(r.agent.ID)
		if e.inflight == 0 && r.rev > e.rev {
			e.rev, e.deleted = r.rev, false
		}
	}
	s.tombs = s.tombs[:0]
	for id, e := range s.mirror {
		if e.deleted {
			s.tombs = append(s.tombs, tomb{id, e.rev})
		}
	}
	s.resumeRev = snap.rev
	return out, nil
}

type snapAgent struct {
	agent store.Agent
	rev   int64
}

// etcdSnapshot is the registry at one revision.
type etcdSnapshot struct {
	rev    int64
	agents []snapAgent
	// lastSeen is the newest blob time per agent over all replicas;
	// ownSeen holds the times in this replica's own blobs.
	lastSeen map[string]int64
	ownSeen  map[string]int64
	// foreign are the other replicas' blob entries, for resync.
	foreign []store.Touch
	// liveSince is the earliest start of the other running replicas.
	liveSince time.Time
}

func (s *Store) snapshot(ctx context.Context) (*etcdSnapshot, error) {
	snap := &etcdSnapshot{lastSeen: make(map[string]int64), ownSeen: make(map[string]int64)}
	rev, err := s.rangeAll(ctx, s.agentsPrefix, 0, etcdAgentPage, func(kv *mvccpb.KeyValue) {
		id := string(kv.Key[len(s.agentsPrefix):])
		a, err := decodeAgentRecord(id, kv.Value)
		if err != nil {
			s.logger.Error("Skipping corrupt registry record", "agent_id", protocol.Truncate(id), "err", err)
			return
		}
		snap.agents = append(snap.agents, snapAgent{agent: a, rev: kv.ModRevision})
	})
	if err != nil {
		return nil, err
	}
	snap.rev = rev
	ids := newHashIndex(len(snap.agents))
	for _, r := range snap.agents {
		ids.add(r.agent.ID)
	}
	_, err = s.rangeAll(ctx, s.lastSeenPrefix, rev, etcdBlobPage, func(kv *mvccpb.KeyValue) {
		replica, ok := s.parseBlobKey(string(kv.Key))
		if !ok {
			return
		}
		own := replica == s.opts.ReplicaID
		err := decodeLastSeen(kv.Value, func(hash uint64, ns int64) {
			ids.each(hash, func(id string) {
				if ns > snap.lastSeen[id] {
					snap.lastSeen[id] = ns
				}
				if own {
					if ns > snap.ownSeen[id] {
						snap.ownSeen[id] = ns
					}
					return
				}
				snap.foreign = append(snap.foreign, store.Touch{ID: id, LastSeen: time.Unix(0, ns)})
			})
		})
		if err != nil {
			s.logger.Error("Skipping corrupt last-seen blob", "key", string(kv.Key), "err", err)
		}
	})
	if err != nil {
		return nil, err
	}
	var present []*mvccpb.KeyValue
	if _, err := s.rangeAll(ctx, s.replicasPrefix, rev, etcdAgentPage, func(kv *mvccpb.KeyValue) { present = append(present, kv) }); err != nil {
		return nil, err
	}
	snap.liveSince = s.liveSinceOf(present)
	return snap, nil
}

// rangeAll reads every key under prefix at revision rev (0: the current
// one) in pages, calls fn for each and returns the revision read.
func (s *Store) rangeAll(ctx context.Context, prefix string, rev, page int64, fn func(kv *mvccpb.KeyValue)) (int64, error) {
	end := clientv3.GetPrefixRangeEnd(prefix)
	key := prefix
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(page)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		var resp *clientv3.GetResponse
		rctx, cancel := s.requestCtx(ctx)
		err := s.do(rctx, "list "+prefix, func(ctx context.Context) error {
			var err error
			resp, err = s.cli.Get(ctx, key, opts...)
			return err
		})
		cancel()
		if err != nil {
			return 0, err
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			fn(kv)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return rev, nil
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

func decodeAgentRecord(id string, data []byte) (store.Agent, error) {
	var a store.Agent
	if err := json.Unmarshal(data, &a); err != nil {
		return a, err
	}
	if a.ID != id {
		return a, fmt.Errorf("record of %q is stored under %q", protocol.Truncate(a.ID), protocol.Truncate(id))
	}
	return a, nil
}

// parseBlobKey returns the replica of a last-seen blob key.
func (s *Store) parseBlobKey(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, s.lastSeenPrefix)
	if !ok {
		return "", false
	}
	replica, shard, ok := strings.Cut(rest, "/")
	if !ok || replica == "" || len(shard) != 2 {
		return "", false
	}
	if _, err := strconv.ParseUint(shard, 16, 8); err != nil {
		return "", false
	}
	return replica, true
}

func (s *Store) blobKey(shard int) string {
	return fmt.Sprintf("%s%02x", s.ownPrefix, shard)
}

func etcdShardOf(id string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % etcdShards)
}
