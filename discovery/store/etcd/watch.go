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
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// Watch implements Store; see Store for what it delivers. One Watch
// runs at a time: a second concurrent call gets a closed channel. The
// channel closes when ctx ends or the store closes.
func (s *Store) Watch(ctx context.Context) <-chan store.Event {
	out := make(chan store.Event, 1024)
	s.mu.Lock()
	if s.closed || s.watcher != nil {
		s.mu.Unlock()
		s.logger.Error("etcd store: Watch called while another Watch runs or after Close")
		close(out)
		return out
	}
	q := &eventQueue{wake: make(chan struct{}, 1)}
	s.watcher = q
	start := s.resumeRev
	s.wg.Add(2)
	s.mu.Unlock()

	wctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.bg, cancel)
	go func() {
		defer s.wg.Done()
		defer close(out)
		s.pump(wctx, q, out)
	}()
	go func() {
		defer s.wg.Done()
		defer cancel()
		defer stop()
		s.watchLoop(wctx, start)
	}()
	return out
}

// eventQueue decouples the watch, and writers releasing held events, from
// the consumer: pushing never blocks.
type eventQueue struct {
	mu   sync.Mutex
	evs  []store.Event
	wake chan struct{}
}

func (q *eventQueue) push(evs ...store.Event) {
	if q == nil || len(evs) == 0 {
		return
	}
	q.mu.Lock()
	q.evs = append(q.evs, evs...)
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

func (s *Store) pump(ctx context.Context, q *eventQueue, out chan<- store.Event) {
	// Two buffers take turns: pushers append to one while the other is
	// sent. They never share a backing array.
	var spare []store.Event
	for {
		q.mu.Lock()
		batch := q.evs
		q.evs = spare
		q.mu.Unlock()
		spare = batch[:0]
		if len(batch) == 0 {
			select {
			case <-q.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		for i := range batch {
			select {
			case out <- batch[i]:
				s.events.Add(1)
			case <-ctx.Done():
				return
			}
		}
		clear(batch)
	}
}

func (s *Store) watchLoop(ctx context.Context, rev int64) {
	defer func() { s.endWatch(rev) }()
	// Without a List before, the first thing delivered is everything.
	resync := rev == 0
	bo := newEtcdBackoff(100*time.Millisecond, 5*time.Second)
	failing := false
	for ctx.Err() == nil {
		if resync {
			r, err := s.resync(ctx)
			if err != nil {
				if ctx.Err() == nil {
					s.logger.Warn("Reading the registry from etcd after the watch fell behind failed; retrying", "err", err)
				}
				bo.wait(ctx)
				continue
			}
			rev, resync = r, false
		}
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := s.cli.Watch(wctx, s.opts.Prefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1), clientv3.WithProgressNotify())
		for resp := range wch {
			if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
				s.logger.Warn("The etcd watch fell behind compaction; reading the registry again", "revision", rev, "compact_revision", resp.CompactRevision)
				resync = true
				break
			}
			if err := resp.Err(); err != nil {
				if ctx.Err() == nil {
					s.logger.Warn("The etcd watch was interrupted; resuming", "revision", rev, "err", err)
					failing = true
				}
				break
			}
			if failing {
				s.logger.Info("The etcd watch is back", "revision", rev)
				failing = false
			}
			bo.reset()
			if resp.IsProgressNotify() {
				rev = max(rev, resp.Header.Revision)
				s.mu.Lock()
				s.progressLocked(rev)
				s.mu.Unlock()
				continue
			}
			if n := len(resp.Events); n > 0 {
				s.handleEvents(resp.Events)
				rev = max(rev, resp.Events[n-1].Kv.ModRevision)
				s.mu.Lock()
				s.progressLocked(rev)
				s.mu.Unlock()
			}
		}
		cancel()
		if ctx.Err() == nil && !resync {
			bo.wait(ctx)
		}
	}
}

// endWatch lets a later Watch resume: events still held for writes in
// flight are given back by starting before the oldest of them.
func (s *Store) endWatch(rev int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.mirror {
		for _, h := range e.held {
			rev = min(rev, h.rev-1)
		}
		e.held = nil
	}
	s.resumeRev = rev
	s.watcher = nil
}

// handleEvents turns one watch response into store events.
func (s *Store) handleEvents(events []*clientv3.Event) {
	type agentEv struct {
		id  string
		rev int64
		ev  store.Event
	}
	var agents []agentEv
	var touches []lastSeenEntry
	for _, ev := range events {
		key := string(ev.Kv.Key)
		switch {
		case strings.HasPrefix(key, s.agentsPrefix):
			id := key[len(s.agentsPrefix):]
			if ev.Type == clientv3.EventTypeDelete {
				agents = append(agents, agentEv{id, ev.Kv.ModRevision, store.Event{Type: store.EventDelete, Agent: store.Agent{ID: id}}})
				continue
			}
			a, err := decodeAgentRecord(id, ev.Kv.Value)
			if err != nil {
				s.logger.Error("Skipping corrupt registry record", "agent_id", protocol.Truncate(id), "err", err)
				continue
			}
			agents = append(agents, agentEv{id, ev.Kv.ModRevision, store.Event{Type: store.EventPut, Agent: a}})
		case strings.HasPrefix(key, s.lastSeenPrefix):
			if ev.Type != clientv3.EventTypePut || strings.HasPrefix(key, s.ownPrefix) {
				continue // our own blob, or one whose lease ended
			}
			if _, ok := s.parseBlobKey(key); !ok {
				continue
			}
			err := decodeLastSeen(ev.Kv.Value, func(hash uint64, ns int64) {
				touches = append(touches, lastSeenEntry{hash: hash, ns: ns})
			})
			if err != nil {
				s.logger.Error("Skipping corrupt last-seen blob", "key", key, "err", err)
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, a := range agents {
		s.deliverLocked(a.id, a.rev, a.ev)
	}
	evs := make([]store.Event, 0, len(touches))
	for _, t := range touches {
		s.byHash.each(t.hash, func(id string) {
			if s.knownLocked(id) {
				evs = append(evs, store.Event{Type: store.EventTouch, Agent: store.Agent{ID: id, LastSeen: time.Unix(0, t.ns)}})
			}
		})
	}
	s.watcher.push(evs...)
}

// pushTouchesLocked delivers the touches of agents this store knows.
func (s *Store) pushTouchesLocked(touches []store.Touch) {
	evs := make([]store.Event, 0, len(touches))
	for _, t := range touches {
		if s.knownLocked(t.ID) {
			evs = append(evs, store.Event{Type: store.EventTouch, Agent: store.Agent{ID: t.ID, LastSeen: t.LastSeen}})
		}
	}
	s.watcher.push(evs...)
}

// resync reads everything at a new revision and delivers what differs from
// what this store knows, then the other replicas' times. It returns the
// revision to watch from.
func (s *Store) resync(ctx context.Context) (int64, error) {
	snap, err := s.snapshot(ctx)
	if err != nil {
		return 0, err
	}
	s.resyncs.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	present := make(map[string]struct{}, len(snap.agents))
	for _, r := range snap.agents {
		a := r.agent
		present[a.ID] = struct{}{}
		if ns, ok := snap.lastSeen[a.ID]; ok && ns > a.LastSeen.UnixNano() {
			a.LastSeen = time.Unix(0, ns)
		}
		s.deliverLocked(a.ID, r.rev, store.Event{Type: store.EventPut, Agent: a})
	}
	var gone []string
	for id, e := range s.mirror {
		if _, ok := present[id]; !ok && !e.deleted && e.rev > 0 {
			gone = append(gone, id)
		}
	}
	slices.Sort(gone)
	for _, id := range gone {
		s.deliverLocked(id, snap.rev, store.Event{Type: store.EventDelete, Agent: store.Agent{ID: id}})
	}
	s.progressLocked(snap.rev)
	s.pushTouchesLocked(snap.foreign)
	return snap.rev, nil
}
