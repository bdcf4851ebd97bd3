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
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// Touch implements Store: the times move in this replica's blobs, and
// every blob with a moved entry is written, several per Txn.
func (s *Store) Touch(ctx context.Context, touches []store.Touch) error {
	s.touchMu.Lock()
	defer s.touchMu.Unlock()
	s.mu.Lock()
	for _, t := range touches {
		if !s.knownLocked(t.ID) {
			continue
		}
		ns := t.LastSeen.UnixNano()
		if ns <= 0 {
			continue // before 1970: not a heartbeat, and not encodable
		}
		sh := &s.own[etcdShardOf(t.ID)]
		if old, ok := sh.seen[t.ID]; ok && old >= ns {
			continue
		}
		if sh.seen == nil {
			sh.seen = make(map[string]int64)
		}
		sh.seen[t.ID] = ns
		sh.dirty = true
	}
	s.mu.Unlock()
	ctx, cancel := s.requestCtx(ctx)
	defer cancel()
	return s.flushLocked(ctx)
}

type blobWrite struct {
	shard int
	key   string
	val   []byte // nil deletes the key
}

// flushLocked writes every dirty blob. touchMu is held.
func (s *Store) flushLocked(ctx context.Context) error {
	// A lost lease marks every blob dirty again; the second round writes
	// them under the new lease.
	for round := 0; round < 3; round++ {
		writes, err := s.encodeDirtyLocked()
		if err != nil || len(writes) == 0 {
			return err
		}
		for len(writes) > 0 {
			n, size := 0, 0
			for n < len(writes) && n < etcdTxnOps {
				sz := len(writes[n].key) + len(writes[n].val)
				if n > 0 && size+sz > etcdTxnBytes {
					break
				}
				size += sz
				n++
			}
			batch := writes[:n]
			writes = writes[n:]
			err := s.do(ctx, fmt.Sprintf("write %d last-seen blobs", len(batch)), func(ctx context.Context) error {
				return s.writeBlobsLocked(ctx, batch)
			})
			if err != nil {
				return err
			}
			for _, w := range batch {
				s.own[w.shard].dirty = false
			}
			s.keysWritten.Add(uint64(len(batch)))
			s.blobsWritten.Add(uint64(len(batch)))
			s.bytesWritten.Add(uint64(size))
		}
	}
	return nil
}

func (s *Store) writeBlobsLocked(ctx context.Context, batch []blobWrite) error {
	lease, err := s.ensureLeaseLocked(ctx)
	if err != nil {
		return err
	}
	ops := make([]clientv3.Op, len(batch))
	for i, w := range batch {
		if w.val == nil {
			ops[i] = clientv3.OpDelete(w.key)
		} else {
			ops[i] = clientv3.OpPut(w.key, string(w.val), clientv3.WithLease(lease))
		}
	}
	s.writeRequests.Add(1)
	_, err = s.cli.Txn(ctx).Then(ops...).Commit()
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		s.logger.Warn("The lease of this replica's last-seen times is gone; taking a new one", "replica", s.opts.ReplicaID)
		s.leaseLostLocked(lease)
		return errLeaseLost
	}
	return err
}

// encodeDirtyLocked encodes the dirty blobs, dropping agents that no longer
// exist. touchMu is held.
func (s *Store) encodeDirtyLocked() ([]blobWrite, error) {
	var writes []blobWrite
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.own {
		sh := &s.own[i]
		if !sh.dirty {
			continue
		}
		entries := make([]lastSeenEntry, 0, len(sh.seen))
		for id, ns := range sh.seen {
			if !s.knownLocked(id) {
				delete(sh.seen, id)
				continue
			}
			entries = append(entries, lastSeenEntry{hash: blobHash(id), ns: ns})
		}
		w := blobWrite{shard: i, key: s.blobKey(i)}
		if len(entries) > 0 {
			w.val = encodeLastSeen(entries)
			if len(w.val) > etcdTxnBytes {
				return nil, fmt.Errorf("last-seen blob %s has %d bytes, more than etcd accepts in one request", w.key, len(w.val))
			}
		}
		writes = append(writes, w)
	}
	return writes, nil
}

// ensureLeaseLocked returns the lease of this replica's blobs, granting one
// and starting its keep-alive if needed. touchMu is held.
func (s *Store) ensureLeaseLocked(ctx context.Context) (clientv3.LeaseID, error) {
	if s.lease != 0 {
		return s.lease, nil
	}
	s.mu.Lock()
	closed := s.closed
	if !closed {
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if closed {
		return 0, errors.New("store closed")
	}
	s.writeRequests.Add(1)
	resp, err := s.cli.Grant(ctx, int64(s.opts.LeaseTTL/time.Second))
	if err != nil {
		s.wg.Done()
		return 0, err
	}
	s.lease = resp.ID
	go s.keepAlive(resp.ID)
	return resp.ID, nil
}

// keepAlive renews the lease until the store closes. When the lease is
// gone (etcd unreachable for longer than its TTL), every blob is marked
// for rewriting under a new one.
func (s *Store) keepAlive(id clientv3.LeaseID) {
	defer s.wg.Done()
	ch, err := s.cli.KeepAlive(s.bg, id)
	if err == nil {
		for range ch {
		}
	}
	if s.bg.Err() != nil {
		return
	}
	s.logger.Warn("The lease of this replica's last-seen times expired; they are rewritten with the next flush", "replica", s.opts.ReplicaID, "err", err)
	s.touchMu.Lock()
	s.leaseLostLocked(id)
	s.touchMu.Unlock()
}

func (s *Store) leaseLostLocked(id clientv3.LeaseID) {
	if s.lease != id {
		return
	}
	s.lease = 0
	for i := range s.own {
		if len(s.own[i].seen) > 0 {
			s.own[i].dirty = true
		}
	}
}

// claimLease returns a lease that outlives a claim expiring at expires.
// Claims share one lease per claimLeaseWindow of expiry: a registration
// then costs no lease grant of its own, and a registration that fails
// leaves no lease behind.
func (s *Store) claimLease(ctx context.Context, expires time.Time) (clientv3.LeaseID, error) {
	end := expires.Truncate(claimLeaseWindow).Add(claimLeaseWindow)
	now := time.Now()
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	for e := range s.claimLeases {
		// A lease is used only while it has a window of life left.
		if !now.Before(e.Add(-claimLeaseWindow / 2)) {
			delete(s.claimLeases, e)
		}
	}
	if id, ok := s.claimLeases[end]; ok {
		return id, nil
	}
	ttl := int64(math.Ceil(end.Sub(now).Seconds())) + 60
	s.writeRequests.Add(1)
	resp, err := s.cli.Grant(ctx, ttl)
	if err != nil {
		return 0, err
	}
	s.claimLeases[end] = resp.ID
	return resp.ID, nil
}

// dropClaimLease forgets a lease etcd no longer has.
func (s *Store) dropClaimLease(id clientv3.LeaseID) {
	s.claimMu.Lock()
	defer s.claimMu.Unlock()
	for e, l := range s.claimLeases {
		if l == id {
			delete(s.claimLeases, e)
		}
	}
}

// hashIndex maps blob hashes back to agent ids. Collisions are kept in a
// side map: they are so rare that a slice per hash would be a waste.
type hashIndex struct {
	first map[uint64]string
	more  map[uint64][]string
}

func newHashIndex(n int) hashIndex {
	return hashIndex{first: make(map[uint64]string, n), more: make(map[uint64][]string)}
}

func (x hashIndex) add(id string) {
	h := blobHash(id)
	cur, ok := x.first[h]
	switch {
	case !ok:
		x.first[h] = id
	case cur != id && !slices.Contains(x.more[h], id):
		x.more[h] = append(x.more[h], id)
	}
}

func (x hashIndex) remove(id string) {
	h := blobHash(id)
	more := x.more[h]
	if x.first[h] == id {
		if len(more) == 0 {
			delete(x.first, h)
			return
		}
		x.first[h], more = more[0], more[1:]
	} else if i := slices.Index(more, id); i >= 0 {
		more = slices.Delete(more, i, i+1)
	}
	if len(more) == 0 {
		delete(x.more, h)
	} else {
		x.more[h] = more
	}
}

// each calls fn for every id with the hash.
func (x hashIndex) each(h uint64, fn func(id string)) {
	if id, ok := x.first[h]; ok {
		fn(id)
		for _, id := range x.more[h] {
			fn(id)
		}
	}
}

// blobHash numbers an agent in last-seen blobs: FNV-1a 64 of the id, cut
// to blobHashBits.
func blobHash(id string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	return h.Sum64() & (1<<blobHashBits - 1)
}

// lastSeenEntry is one agent in a last-seen blob: the hash of its id and
// when it was last seen (unix nanoseconds; blobs keep milliseconds).
type lastSeenEntry struct {
	hash uint64
	ns   int64
}

func compareLastSeen(a, b lastSeenEntry) int {
	return cmp.Or(cmp.Compare(a.hash, b.hash), cmp.Compare(a.ns, b.ns))
}

// encodeLastSeen encodes one blob: a version byte, the entry count, the
// newest time in unix milliseconds, then per entry in hash order the
// hash's distance from the previous one and the time's distance from the
// newest. Hashes take about 6 bytes, recent times 3.
func encodeLastSeen(entries []lastSeenEntry) []byte {
	slices.SortFunc(entries, compareLastSeen)
	newest := int64(0)
	for _, e := range entries {
		newest = max(newest, e.ns/int64(time.Millisecond))
	}
	b := make([]byte, 0, 16+10*len(entries))
	b = append(b, lastSeenBlobVersion)
	b = binary.AppendUvarint(b, uint64(len(entries)))
	b = binary.AppendUvarint(b, uint64(newest))
	prev := uint64(0)
	for _, e := range entries {
		b = binary.AppendUvarint(b, e.hash-prev)
		b = binary.AppendUvarint(b, uint64(newest-max(e.ns, 0)/int64(time.Millisecond)))
		prev = e.hash
	}
	return b
}

// decodeLastSeen calls fn for every entry of a blob. It rejects, rather
// than guesses at, anything malformed: blobs come from the network.
func decodeLastSeen(b []byte, fn func(hash uint64, ns int64)) error {
	if len(b) == 0 || b[0] != lastSeenBlobVersion {
		return errors.New("unknown last-seen blob version")
	}
	b = b[1:]
	count, n := binary.Uvarint(b)
	if n <= 0 {
		return errors.New("bad entry count")
	}
	b = b[n:]
	// Every entry takes at least 2 bytes.
	if count > uint64(len(b))/2 {
		return fmt.Errorf("entry count %d does not fit the blob", count)
	}
	newest, n := binary.Uvarint(b)
	if n <= 0 || newest > math.MaxInt64/uint64(time.Millisecond) {
		return errors.New("bad newest time")
	}
	b = b[n:]
	const maxHash = 1<<blobHashBits - 1
	hash := uint64(0)
	for i := uint64(0); i < count; i++ {
		d, n := binary.Uvarint(b)
		if n <= 0 || d > maxHash-hash {
			return fmt.Errorf("entry %d: bad hash", i)
		}
		b = b[n:]
		age, n := binary.Uvarint(b)
		if n <= 0 || age > newest {
			return fmt.Errorf("entry %d: bad time", i)
		}
		b = b[n:]
		hash += d
		fn(hash, int64(newest-age)*int64(time.Millisecond))
	}
	if len(b) != 0 {
		return errors.New("trailing bytes")
	}
	return nil
}
