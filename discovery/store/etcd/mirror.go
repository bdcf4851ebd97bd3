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
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// mirrorEntry is what the store knows about one agent key.
type mirrorEntry struct {
	// rev is the newest revision of the key this process has applied or
	// written: events at or below it are stale.
	rev     int64
	deleted bool
	// inflight counts this process's writes of the key that have not
	// returned; events that arrive meanwhile wait in held.
	inflight int
	held     []heldEvent
}

type heldEvent struct {
	rev int64
	ev  store.Event
}

// tomb lists a deleted agent whose mirror entry can go once the watch has
// passed rev.
type tomb struct {
	id  string
	rev int64
}

// ownShard holds this replica's LastSeen times of one blob.
type ownShard struct {
	seen  map[string]int64
	dirty bool
}

// entryLocked returns the mirror entry of id, creating it.
func (s *Store) entryLocked(id string) *mirrorEntry {
	e := s.mirror[id]
	if e == nil {
		e = &mirrorEntry{}
		s.mirror[id] = e
		s.byHash.add(id)
	}
	return e
}

// dropLocked forgets id.
func (s *Store) dropLocked(id string) {
	delete(s.mirror, id)
	s.byHash.remove(id)
}

// knownLocked says whether id is a live agent as far as this store knows.
func (s *Store) knownLocked(id string) bool {
	e := s.mirror[id]
	return e != nil && !e.deleted && e.rev > 0
}

// begin marks a write of id in flight.
func (s *Store) begin(id string) {
	s.mu.Lock()
	s.entryLocked(id).inflight++
	s.mu.Unlock()
}

// end records the outcome of a write of id begun with begin: on success,
// the revision it produced. Events held meanwhile are then delivered or
// dropped as stale.
func (s *Store) end(id string, rev int64, deleted, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entryLocked(id)
	e.inflight--
	if ok && rev > e.rev {
		e.rev, e.deleted = rev, deleted
		if deleted {
			s.tombs = append(s.tombs, tomb{id, rev})
		}
	}
	if e.inflight > 0 {
		return
	}
	if held := e.held; len(held) > 0 {
		e.held = nil
		for _, h := range held {
			s.deliverLocked(id, h.rev, h.ev)
		}
	}
	if e.rev == 0 && len(e.held) == 0 {
		s.dropLocked(id) // a failed first write leaves nothing behind
	}
}

// deliverLocked passes an agent event at rev to the watcher unless it is
// stale, or holds it while a write of the same agent is in flight.
func (s *Store) deliverLocked(id string, rev int64, ev store.Event) {
	e := s.mirror[id]
	if e == nil {
		if ev.Type == store.EventDelete {
			return // never seen, nothing to remove
		}
		e = s.entryLocked(id)
	}
	if e.inflight > 0 {
		e.held = append(e.held, heldEvent{rev, ev})
		return
	}
	if rev <= e.rev {
		return
	}
	e.rev = rev
	e.deleted = ev.Type == store.EventDelete
	if e.deleted {
		s.tombs = append(s.tombs, tomb{id, rev})
	}
	s.watcher.push(ev)
}

// progressLocked forgets deleted agents the watch has moved past: no event
// at or below their deletion can arrive any more.
func (s *Store) progressLocked(rev int64) {
	keep := s.tombs[:0]
	for _, t := range s.tombs {
		if t.rev > rev {
			keep = append(keep, t)
			continue
		}
		if e := s.mirror[t.id]; e != nil && e.deleted && e.rev <= rev && e.inflight == 0 && len(e.held) == 0 {
			s.dropLocked(t.id)
		}
	}
	clear(s.tombs[len(keep):])
	s.tombs = keep
}
