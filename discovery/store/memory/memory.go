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

package memory

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// Store keeps the registry in memory only: for tests and throwaway
// servers. Records are copied in and out so callers never share state with
// the store.
type Store struct {
	mu     sync.Mutex
	agents map[string]*store.Agent
	claims map[string]time.Time
}

// New returns an empty Store.
func New() *Store {
	return &Store{agents: make(map[string]*store.Agent), claims: make(map[string]time.Time)}
}

// List implements Store.
func (s *Store) List(context.Context) ([]store.Agent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]store.Agent, 0, len(s.agents))
	for _, a := range s.agents {
		out = append(out, *a.Clone())
	}
	return out, nil
}

// Put implements Store.
func (s *Store) Put(_ context.Context, a *store.Agent) error {
	s.mu.Lock()
	s.agents[a.ID] = a.Clone()
	s.mu.Unlock()
	return nil
}

// Delete implements Store.
func (s *Store) Delete(_ context.Context, id string) error {
	s.mu.Lock()
	delete(s.agents, id)
	s.mu.Unlock()
	return nil
}

// Touch implements Store.
func (s *Store) Touch(_ context.Context, touches []store.Touch) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range touches {
		if a, ok := s.agents[t.ID]; ok && t.LastSeen.After(a.LastSeen) {
			a.LastSeen = t.LastSeen
		}
	}
	return nil
}

// Update implements Store. One lock covers the read, the claim and the
// write.
func (s *Store) Update(_ context.Context, id string, claim *store.TokenClaim, fn store.UpdateFunc) (*store.Agent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if claim != nil {
		if exp, ok := s.claims[claim.ID]; ok && now.Before(exp) {
			return nil, store.ErrTokenUsed
		}
	}
	var cur *store.Agent
	if a, ok := s.agents[id]; ok {
		cur = a.Clone()
	}
	next, err := fn(cur)
	if err != nil {
		return nil, err
	}
	if next != nil && next.ID != id {
		return nil, fmt.Errorf("update agent %q: the new record is for %q", id, next.ID)
	}
	if claim != nil {
		// Expired claims are dropped as new ones come in, so the map stays
		// as small as the set of live single-use tokens.
		for k, exp := range s.claims {
			if !now.Before(exp) {
				delete(s.claims, k)
			}
		}
		s.claims[claim.ID] = claim.Expires
	}
	if next == nil {
		delete(s.agents, id)
		return nil, nil
	}
	s.agents[id] = next.Clone()
	return next.Clone(), nil
}

// LiveSince implements Store: a memory store is never shared.
func (s *Store) LiveSince() time.Time { return time.Time{} }

// Watch implements Store: a memory store is never shared.
func (s *Store) Watch(context.Context) <-chan store.Event { return nil }

// Close implements Store.
func (s *Store) Close() error { return nil }

var _ store.Store = (*Store)(nil)
