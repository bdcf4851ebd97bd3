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
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// defaultEtcdLivenessTTL is the lease of a replica's presence key: how long
// after a crash its id stays taken, and so how long a replica restarted
// right after a crash waits at start.
const defaultEtcdLivenessTTL = 10 * time.Second

// errReplicaIDInUse means another running process holds this replica id.
var errReplicaIDInUse = errors.New("replica id in use")

// replicaRecord is what a running replica keeps under replicas/<id>, on a
// short lease that it keeps alive: the key exists exactly while the
// replica runs.
type replicaRecord struct {
	// Instance tells this process from an earlier or a second process
	// with the same replica id.
	Instance string `json:"instance"`
	// SinceMS is when the replica started recording heartbeats, in unix
	// milliseconds.
	SinceMS int64 `json:"since_ms"`
	// Host helps the operator find a process that holds the id.
	Host string `json:"host,omitempty"`
}

// replicaState is this store's presence; guarded by replicaMu.
type replicaState struct {
	val   string // the encoded replicaRecord
	lease clientv3.LeaseID
	// liveSince is what the last List found: see LiveSince.
	liveSince time.Time
}

func newReplicaRecord(now time.Time) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	host, _ := os.Hostname()
	data, _ := json.Marshal(replicaRecord{Instance: hex.EncodeToString(b[:]), SinceMS: now.UnixMilli(), Host: host})
	return string(data)
}

// LiveSince implements Store: since when the other replicas that were
// running at the last List (their presence keys existed) have been
// recording heartbeats, the zero time if none was running.
func (s *Store) LiveSince() time.Time {
	s.replicaMu.Lock()
	defer s.replicaMu.Unlock()
	return s.replica.liveSince
}

// liveSince is the earliest start among the presence keys of other
// replicas in a snapshot.
func (s *Store) liveSinceOf(kvs []*mvccpb.KeyValue) time.Time {
	var since time.Time
	for _, kv := range kvs {
		if string(kv.Key) == s.replicaKey {
			continue
		}
		var rec replicaRecord
		if err := json.Unmarshal(kv.Value, &rec); err != nil || rec.SinceMS <= 0 {
			s.logger.Error("Skipping corrupt replica record", "key", string(kv.Key), "err", err)
			continue
		}
		if t := time.UnixMilli(rec.SinceMS); since.IsZero() || t.Before(since) {
			since = t
		}
	}
	return since
}

// claimReplica takes this store's replica id for the process: it creates
// the presence key on a lease it then keeps alive. If another process holds
// the id, claimReplica waits as long as that process's lease could still
// run after a crash; a key that outlives that wait is kept alive by a
// running server, and the claim fails with errReplicaIDInUse.
func (s *Store) claimReplica(ctx context.Context) error {
	s.replicaMu.Lock()
	defer s.replicaMu.Unlock()
	if s.replica.lease != 0 {
		return nil
	}
	var deadline time.Time
	for {
		held, err := s.tryClaimReplicaLocked(ctx)
		if err != nil {
			return err
		}
		if held == nil {
			return nil
		}
		var rec replicaRecord
		_ = json.Unmarshal(held.Value, &rec)
		if deadline.IsZero() {
			granted := s.opts.LivenessTTL
			tctx, cancel := s.requestCtx(ctx)
			if ttl, err := s.cli.TimeToLive(tctx, clientv3.LeaseID(held.Lease)); err == nil && ttl.GrantedTTL > 0 {
				granted = time.Duration(ttl.GrantedTTL) * time.Second
			}
			cancel()
			deadline = time.Now().Add(granted + 2*time.Second)
			s.logger.Warn("Another server process holds this replica id; waiting for its lease to end, as it does if that process crashed",
				"replica", s.opts.ReplicaID, "holder_host", rec.Host, "wait", granted+2*time.Second)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w: replica id %q is held by a running server (host %q, instance %s): give every replica its own --etcd.replica-id",
				errReplicaIDInUse, s.opts.ReplicaID, rec.Host, rec.Instance)
		}
		t := time.NewTimer(250 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("claim replica id %q: %w", s.opts.ReplicaID, ctx.Err())
		case <-t.C:
		}
	}
}

// tryClaimReplicaLocked makes one attempt to create the presence key. It
// returns the key of the process holding the id instead, if any.
func (s *Store) tryClaimReplicaLocked(ctx context.Context) (*mvccpb.KeyValue, error) {
	ctx, cancel := s.requestCtx(ctx)
	defer cancel()
	var lease, adopt clientv3.LeaseID
	var held *mvccpb.KeyValue
	err := s.do(ctx, "claim replica id", func(ctx context.Context) error {
		if lease == 0 {
			s.writeRequests.Add(1)
			resp, err := s.cli.Grant(ctx, int64(s.opts.LivenessTTL/time.Second))
			if err != nil {
				return err
			}
			lease = resp.ID
		}
		s.writeRequests.Add(1)
		resp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(s.replicaKey), "=", 0)).
			Then(clientv3.OpPut(s.replicaKey, s.replica.val, clientv3.WithLease(lease))).
			Else(clientv3.OpGet(s.replicaKey)).
			Commit()
		if err != nil {
			return err
		}
		held, adopt = nil, 0
		if !resp.Succeeded {
			kvs := resp.Responses[0].GetResponseRange().GetKvs()
			switch {
			case len(kvs) != 1:
				return errors.New("presence key vanished during the claim")
			case string(kvs[0].Value) != s.replica.val:
				held = kvs[0]
			case clientv3.LeaseID(kvs[0].Lease) != lease:
				// Ours, on the lease of an earlier claim whose keep-alive
				// stopped: keep that lease alive instead.
				adopt = clientv3.LeaseID(kvs[0].Lease)
			}
		}
		return nil
	})
	if err == nil && adopt != 0 {
		rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
		_, _ = s.cli.Revoke(rctx, lease)
		rcancel()
		lease = adopt
	}
	if err != nil || held != nil {
		if lease != 0 {
			// Best effort: a lease nobody uses ends by itself.
			rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = s.cli.Revoke(rctx, lease)
			rcancel()
		}
		return held, err
	}
	s.keysWritten.Add(1)
	s.replica.lease = lease
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if !closed {
		go s.keepReplica(lease)
	}
	return nil, nil
}

// keepReplica keeps the presence lease alive until the store closes. A
// lease that ended anyway (etcd unreachable for longer than its TTL) is
// replaced; if another process took the id meanwhile, the store reports
// itself unhealthy until it gets the id back.
func (s *Store) keepReplica(lease clientv3.LeaseID) {
	defer s.wg.Done()
	ch, err := s.cli.KeepAlive(s.bg, lease)
	if err == nil {
		for range ch {
		}
	}
	bo := newEtcdBackoff(time.Second, 10*time.Second)
	for !s.isClosed() && s.bg.Err() == nil {
		s.replicaMu.Lock()
		if s.replica.lease == lease {
			s.replica.lease = 0
		}
		held, err := s.tryClaimReplicaLocked(s.bg)
		s.replicaMu.Unlock()
		switch {
		case err == nil && held == nil:
			if s.idTaken.Swap(false) {
				s.logger.Info("This server holds its replica id again", "replica", s.opts.ReplicaID)
			}
			return
		case held != nil:
			if !s.idTaken.Swap(true) {
				var rec replicaRecord
				_ = json.Unmarshal(held.Value, &rec)
				s.logger.Error("Another server process took this replica id while etcd was out of reach: two replicas share one --etcd.replica-id",
					"replica", s.opts.ReplicaID, "holder_host", rec.Host)
			}
		default:
			s.logger.Warn("Renewing this replica's presence in etcd failed; retrying", "replica", s.opts.ReplicaID, "err", err)
		}
		bo.wait(s.bg)
	}
}

// releaseReplica ends the presence lease, so that a restart of this replica
// need not wait for it.
func (s *Store) releaseReplica() {
	s.replicaMu.Lock()
	lease := s.replica.lease
	s.replica.lease = 0
	s.replicaMu.Unlock()
	if lease == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	s.writeRequests.Add(1)
	if _, err := s.cli.Revoke(ctx, lease); err != nil {
		s.logger.Warn("Releasing this replica's id in etcd failed; a restart waits for its lease to end", "replica", s.opts.ReplicaID, "err", err)
	}
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}
