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
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// Put implements Store: the record is acknowledged once etcd committed it.
func (s *Store) Put(ctx context.Context, a *store.Agent) error {
	if a.ID == "" || len(a.ID) > maxEtcdIDLen {
		return fmt.Errorf("put agent: invalid id %q", protocol.Truncate(a.ID))
	}
	data, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode agent %q: %w", a.ID, err)
	}
	key, val := s.agentsPrefix+a.ID, string(data)
	var rev int64
	ctx, cancel := s.requestCtx(ctx)
	defer cancel()
	s.begin(a.ID)
	err = s.do(ctx, fmt.Sprintf("put agent %q", a.ID), func(ctx context.Context) error {
		s.writeRequests.Add(1)
		resp, err := s.cli.Put(ctx, key, val)
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	s.end(a.ID, rev, false, err == nil)
	if err != nil {
		return err
	}
	s.keysWritten.Add(1)
	s.bytesWritten.Add(uint64(len(key) + len(val)))
	return nil
}

// Update implements Store with optimistic concurrency: it reads the record
// and its ModRevision, and writes in a Txn that succeeds only if the record
// is still at that revision (and, with a claim, only if the token key does
// not exist yet). When another replica changed the record in between, fn
// runs again on the new record, at most maxUpdateAttempts times.
//
// A Txn that etcd committed but whose answer was lost is sent again by do;
// the compare then fails, and the Else branch shows our own claim or, after
// such a resend only, our own value, which is taken as success rather than
// as a conflict.
func (s *Store) Update(ctx context.Context, id string, claim *store.TokenClaim, fn store.UpdateFunc) (*store.Agent, error) {
	if id == "" || len(id) > maxEtcdIDLen {
		return nil, fmt.Errorf("update agent: invalid id %q", protocol.Truncate(id))
	}
	key := s.agentsPrefix + id
	var claimKey, claimVal string
	if claim != nil {
		if claim.ID == "" || len(claim.ID) > maxTokenIDLen {
			return nil, fmt.Errorf("claim token: id must have 1 to %d characters", maxTokenIDLen)
		}
		claimKey = s.tokensPrefix + claim.ID
		var nonce [8]byte
		_, _ = rand.Read(nonce[:])
		claimVal = s.opts.ReplicaID + "/" + hex.EncodeToString(nonce[:])
	}
	ctx, cancel := s.requestCtx(ctx)
	defer cancel()
	var (
		rev     int64
		deleted bool
		done    bool
	)
	s.begin(id)
	defer func() { s.end(id, rev, deleted, done) }()

	// The first read also looks at the claim, so that a reused token is
	// refused before fn runs.
	readOps := []clientv3.Op{clientv3.OpGet(key)}
	if claim != nil {
		readOps = append(readOps, clientv3.OpGet(claimKey, clientv3.WithCountOnly()))
	}
	var read *clientv3.TxnResponse
	err := s.do(ctx, fmt.Sprintf("read agent %q", id), func(ctx context.Context) error {
		var err error
		read, err = s.cli.Txn(ctx).Then(readOps...).Commit()
		return err
	})
	if err != nil {
		return nil, err
	}
	if claim != nil && read.Responses[1].GetResponseRange().Count > 0 {
		return nil, store.ErrTokenUsed
	}
	kvs := read.Responses[0].GetResponseRange().GetKvs()

	var result *store.Agent
	conflictBackoff := newEtcdBackoff(2*time.Millisecond, 100*time.Millisecond)
	conflictBackoff.full = true
	for attempt := 1; ; attempt++ {
		var cur *store.Agent
		curRev := int64(0)
		if len(kvs) == 1 {
			a, err := decodeAgentRecord(id, kvs[0].Value)
			if err != nil {
				return nil, fmt.Errorf("update agent %q: stored record: %w", id, err)
			}
			cur, curRev = &a, kvs[0].ModRevision
		}
		next, err := fn(cur)
		if err != nil {
			return nil, err
		}
		var val string
		op := clientv3.OpDelete(key)
		if next != nil {
			if next.ID != id {
				return nil, fmt.Errorf("update agent %q: the new record is for %q", id, protocol.Truncate(next.ID))
			}
			data, err := json.Marshal(next)
			if err != nil {
				return nil, fmt.Errorf("encode agent %q: %w", id, err)
			}
			val = string(data)
			op = clientv3.OpPut(key, val)
		}

		var resp *clientv3.TxnResponse
		sent := 0
		err = s.do(ctx, fmt.Sprintf("update agent %q", id), func(ctx context.Context) error {
			sent++
			cmps := []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(key), "=", curRev)}
			ops := []clientv3.Op{op}
			elseOps := []clientv3.Op{clientv3.OpGet(key)}
			var lease clientv3.LeaseID
			if claim != nil {
				var err error
				if lease, err = s.claimLease(ctx, claim.Expires); err != nil {
					return err
				}
				cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(claimKey), "=", 0))
				ops = append(ops, clientv3.OpPut(claimKey, claimVal, clientv3.WithLease(lease)))
				elseOps = append(elseOps, clientv3.OpGet(claimKey))
			}
			s.writeRequests.Add(1)
			var err error
			resp, err = s.cli.Txn(ctx).If(cmps...).Then(ops...).Else(elseOps...).Commit()
			if errors.Is(err, rpctypes.ErrLeaseNotFound) {
				s.dropClaimLease(lease)
				return errLeaseLost
			}
			return err
		})
		if err != nil {
			return nil, err
		}
		committed := resp.Succeeded
		if committed {
			rev = resp.Header.Revision
		} else {
			kvs = resp.Responses[0].GetResponseRange().GetKvs()
			var ckvs []*mvccpb.KeyValue
			if claim != nil {
				ckvs = resp.Responses[1].GetResponseRange().GetKvs()
			}
			switch {
			case len(ckvs) == 1 && string(ckvs[0].Value) != claimVal:
				return nil, store.ErrTokenUsed
			case len(ckvs) == 1:
				// Our own earlier attempt committed, record included; the
				// claim's revision is that of the write.
				committed, rev = true, ckvs[0].ModRevision
			case sent > 1 && claim == nil && next != nil && len(kvs) == 1 && string(kvs[0].Value) == val:
				// An earlier send of this Txn failed on our side: the value
				// is ours. (Only then: two writers that computed the same
				// record from the same one are a conflict, not a success.)
				committed, rev = true, kvs[0].ModRevision
			case claim == nil && next == nil && len(kvs) == 0:
				// Gone already: what fn asked for. Older events of the
				// agent are stale from here on.
				committed, rev = true, resp.Header.Revision
			}
		}
		if committed {
			deleted, done, result = next == nil, true, next
			s.keysWritten.Add(1)
			s.bytesWritten.Add(uint64(len(key) + len(val)))
			if claim != nil {
				s.keysWritten.Add(1)
				s.bytesWritten.Add(uint64(len(claimKey) + len(claimVal)))
			}
			break
		}
		s.conflicts.Add(1)
		// Writers that collided back off by random amounts, so one of them
		// gets through next time.
		if attempt >= maxUpdateAttempts || !conflictBackoff.wait(ctx) {
			return nil, fmt.Errorf("update agent %q: %w: the record kept changing (%d attempts)", id, store.ErrUnavailable, attempt)
		}
	}
	if result == nil {
		return nil, nil
	}
	return result.Clone(), nil
}

// Delete implements Store. This replica's last-seen entry of the agent is
// dropped with the next write of its blob.
func (s *Store) Delete(ctx context.Context, id string) error {
	var rev int64
	var n int64
	ctx, cancel := s.requestCtx(ctx)
	defer cancel()
	s.begin(id)
	err := s.do(ctx, fmt.Sprintf("delete agent %q", id), func(ctx context.Context) error {
		s.writeRequests.Add(1)
		resp, err := s.cli.Delete(ctx, s.agentsPrefix+id)
		if err == nil {
			rev, n = resp.Header.Revision, resp.Deleted
		}
		return err
	})
	// Even when nothing was deleted, the agent was absent at rev: older
	// events of it are stale.
	s.end(id, rev, true, err == nil)
	if err != nil {
		return err
	}
	s.keysWritten.Add(uint64(n))
	return nil
}
