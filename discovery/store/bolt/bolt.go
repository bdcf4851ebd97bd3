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
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	bbolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// Buckets of the bolt registry file.
var (
	bucketAgents   = []byte("agents")
	bucketLastSeen = []byte("last_seen")
	bucketClaims   = []byte("token_claims")
	bucketMeta     = []byte("meta")
	keySchema      = []byte("schema_version")
)

// boltSchemaVersion is bumped whenever the layout changes incompatibly; an
// older binary refuses a newer file instead of misreading it.
const boltSchemaVersion = 1

// claimPurgeEvery says how many token claims pass between purges of expired
// claims, so the purge's cost is spread thin.
const claimPurgeEvery = 256

// Options tunes a Store.
type Options struct {
	// LockTimeout bounds the wait for the file lock held by another process
	// (1s).
	LockTimeout time.Duration
	// Logger reports skipped corrupt records.
	Logger *slog.Logger
}

// Store keeps the registry in one bbolt file. Agent records and their
// last-seen times live in separate buckets so a heartbeat flush writes 8
// bytes per agent instead of rewriting records. Writes that must be durable
// go through bolt's Batch, which commits concurrent callers together: one
// fsync acknowledges many registrations.
type Store struct {
	path   string
	opts   Options
	logger *slog.Logger
	claims uint64 // claims since the last purge; guarded by Batch's serial execution
	// listBatchSize is listBatch; tests make it small.
	listBatchSize int

	// mu guards db, which List replaces (see there); every other method
	// holds it shared.
	mu sync.RWMutex
	db *bbolt.DB
}

// Open opens or creates the registry file at path.
func Open(path string, opts Options) (*Store, error) {
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	db, err := openBolt(path, opts)
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketAgents, bucketLastSeen, bucketClaims, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		v := meta.Get(keySchema)
		if v == nil {
			return meta.Put(keySchema, binary.BigEndian.AppendUint64(nil, boltSchemaVersion))
		}
		if len(v) != 8 || binary.BigEndian.Uint64(v) != boltSchemaVersion {
			return fmt.Errorf("registry schema version %x is not supported by this version (%d)", v, boltSchemaVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("initialize registry %s: %w", path, err)
	}
	return &Store{path: path, opts: opts, db: db, logger: opts.Logger, listBatchSize: listBatch}, nil
}

func openBolt(path string, opts Options) (*bbolt.DB, error) {
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: opts.LockTimeout})
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("registry %s is locked by another process (is another server running on this data directory?)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open registry %s: %w", path, err)
	}
	return db, nil
}

// listBatch is how many records List reads between reopenings of the file.
const listBatch = 10_000

// List implements Store. A record that does not decode is skipped and
// logged: one corrupt entry must not keep the whole fleet out of discovery.
//
// Bolt reads through a shared memory map of the file, and every page List
// touched would stay in the process's resident memory for as long as the
// file is open (about 150 MB at 100,000 agents) although nothing reads most
// of them again: heartbeats write only the last_seen bucket. So List reads
// the records in batches and reopens the file after each, which drops the
// mapping: the pages resident at any moment are one batch's. The file lock
// is released for those moments; a second server that takes it makes the
// reopen fail, and this one exits with the lock error before it has written
// anything.
func (s *Store) List(context.Context) ([]store.Agent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []store.Agent
	var from []byte
	for {
		next, err := s.listBatch(from, &out)
		if err != nil {
			return nil, err
		}
		if err := s.db.Close(); err != nil {
			return nil, fmt.Errorf("reopen registry while loading it: %w", err)
		}
		if s.db, err = openBolt(s.path, s.opts); err != nil {
			return nil, fmt.Errorf("reopen registry while loading it: %w", err)
		}
		if next == nil {
			return out, nil
		}
		from = next
	}
}

// listBatch appends up to s.listBatchSize records, starting at key from (the first
// when nil), to out. It returns the key to continue from, nil at the end.
func (s *Store) listBatch(from []byte, out *[]store.Agent) ([]byte, error) {
	var next []byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		seen := tx.Bucket(bucketLastSeen)
		c := tx.Bucket(bucketAgents).Cursor()
		k, v := c.First()
		if from != nil {
			k, v = c.Seek(from)
		}
		for n := 0; k != nil; k, v = c.Next() {
			if n == s.listBatchSize {
				next = bytes.Clone(k) // keys live only as long as the transaction
				return nil
			}
			n++
			var a store.Agent
			if err := json.Unmarshal(v, &a); err != nil || a.ID != string(k) {
				s.logger.Error("Skipping corrupt registry record", "agent_id", string(k), "err", err)
				continue
			}
			if ts := seen.Get(k); len(ts) == 8 {
				if t := time.Unix(0, int64(binary.BigEndian.Uint64(ts))); t.After(a.LastSeen) {
					a.LastSeen = t
				}
			}
			*out = append(*out, a)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return next, nil
}

// Put implements Store.
func (s *Store) Put(_ context.Context, a *store.Agent) error {
	data, err := json.Marshal(a)
	if err != nil {
		return fmt.Errorf("encode agent %q: %w", a.ID, err)
	}
	key := []byte(a.ID)
	s.mu.RLock()
	defer s.mu.RUnlock()
	err = s.db.Batch(func(tx *bbolt.Tx) error {
		if err := tx.Bucket(bucketAgents).Put(key, data); err != nil {
			return err
		}
		return tx.Bucket(bucketLastSeen).Put(key, nanos(a.LastSeen))
	})
	if err != nil {
		return fmt.Errorf("put agent %q: %w", a.ID, err)
	}
	return nil
}

// Delete implements Store.
func (s *Store) Delete(_ context.Context, id string) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		if err := tx.Bucket(bucketAgents).Delete([]byte(id)); err != nil {
			return err
		}
		return tx.Bucket(bucketLastSeen).Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("delete agent %q: %w", id, err)
	}
	return nil
}

// Touch implements Store: one transaction for the whole batch. It reads and
// writes only the last_seen bucket, which Put and Delete keep in step with
// the records, so that a flush does not page in the whole file.
func (s *Store) Touch(_ context.Context, touches []store.Touch) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	err := s.db.Update(func(tx *bbolt.Tx) error {
		seen := tx.Bucket(bucketLastSeen)
		for _, t := range touches {
			key := []byte(t.ID)
			old := seen.Get(key)
			if old == nil {
				continue // deleted meanwhile: don't bring it back
			}
			if len(old) == 8 && int64(binary.BigEndian.Uint64(old)) >= t.LastSeen.UnixNano() {
				continue
			}
			if err := seen.Put(key, nanos(t.LastSeen)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("touch %d agents: %w", len(touches), err)
	}
	return nil
}

// Update implements Store in one transaction: the claim, the read and the
// write commit together or not at all. It goes through Batch like Put, so
// concurrent registrations share an fsync; Batch may run fn more than once,
// which UpdateFunc allows. Expired claims are purged every claimPurgeEvery
// claims; a claim for an expired token is harmless because the token itself
// no longer verifies.
func (s *Store) Update(_ context.Context, id string, claim *store.TokenClaim, fn store.UpdateFunc) (*store.Agent, error) {
	key := []byte(id)
	var out *store.Agent
	s.mu.RLock()
	defer s.mu.RUnlock()
	var fnErr error
	err := s.db.Batch(func(tx *bbolt.Tx) error {
		out, fnErr = nil, nil
		claims := tx.Bucket(bucketClaims)
		if claim != nil && claims.Get([]byte(claim.ID)) != nil {
			return store.ErrTokenUsed
		}
		agents, seen := tx.Bucket(bucketAgents), tx.Bucket(bucketLastSeen)
		var cur *store.Agent
		if v := agents.Get(key); v != nil {
			cur = &store.Agent{}
			if err := json.Unmarshal(v, cur); err != nil {
				return fmt.Errorf("decode stored agent: %w", err)
			}
			if ts := seen.Get(key); len(ts) == 8 {
				if t := time.Unix(0, int64(binary.BigEndian.Uint64(ts))); t.After(cur.LastSeen) {
					cur.LastSeen = t
				}
			}
		}
		next, err := fn(cur)
		if err != nil {
			fnErr = err
			return err
		}
		if next == nil {
			if err := agents.Delete(key); err != nil {
				return err
			}
			if err := seen.Delete(key); err != nil {
				return err
			}
		} else {
			if next.ID != id {
				return fmt.Errorf("the new record is for %q", next.ID)
			}
			data, err := json.Marshal(next)
			if err != nil {
				return fmt.Errorf("encode agent: %w", err)
			}
			if err := agents.Put(key, data); err != nil {
				return err
			}
			if err := seen.Put(key, nanos(next.LastSeen)); err != nil {
				return err
			}
			out = next.Clone()
		}
		if claim == nil {
			return nil
		}
		if err := claims.Put([]byte(claim.ID), nanos(claim.Expires)); err != nil {
			return err
		}
		s.claims++
		if s.claims%claimPurgeEvery == 0 {
			return purgeClaims(claims, time.Now())
		}
		return nil
	})
	switch {
	case err == nil:
		return out, nil
	case errors.Is(err, store.ErrTokenUsed):
		return nil, store.ErrTokenUsed
	case fnErr != nil && errors.Is(err, fnErr):
		return nil, fnErr
	}
	return nil, fmt.Errorf("update agent %q: %w", id, err)
}

func purgeClaims(b *bbolt.Bucket, now time.Time) error {
	var expired [][]byte
	err := b.ForEach(func(k, v []byte) error {
		if len(v) == 8 && int64(binary.BigEndian.Uint64(v)) < now.UnixNano() {
			expired = append(expired, k)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, k := range expired {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// LiveSince implements Store: a bolt file belongs to one process.
func (s *Store) LiveSince() time.Time { return time.Time{} }

// Watch implements Store: a bolt file belongs to one process.
func (s *Store) Watch(context.Context) <-chan store.Event { return nil }

// Close implements Store.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.db.Close()
}

func nanos(t time.Time) []byte {
	return binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano()))
}

var _ store.Store = (*Store)(nil)
