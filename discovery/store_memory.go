package discovery

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// MemoryStore keeps the registry in memory only: for tests and throwaway
// servers. Records are copied in and out so callers never share state with
// the store.
type MemoryStore struct {
	mu     sync.Mutex
	agents map[string]*Agent
	claims map[string]time.Time
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore() *MemoryStore {
	return &MemoryStore{agents: make(map[string]*Agent), claims: make(map[string]time.Time)}
}

// List implements Store.
func (s *MemoryStore) List(context.Context) ([]Agent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Agent, 0, len(s.agents))
	for _, a := range s.agents {
		out = append(out, *a.clone())
	}
	return out, nil
}

// Put implements Store.
func (s *MemoryStore) Put(_ context.Context, a *Agent) error {
	s.mu.Lock()
	s.agents[a.ID] = a.clone()
	s.mu.Unlock()
	return nil
}

// Delete implements Store.
func (s *MemoryStore) Delete(_ context.Context, id string) error {
	s.mu.Lock()
	delete(s.agents, id)
	s.mu.Unlock()
	return nil
}

// Touch implements Store.
func (s *MemoryStore) Touch(_ context.Context, touches []Touch) error {
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
func (s *MemoryStore) Update(_ context.Context, id string, claim *TokenClaim, fn UpdateFunc) (*Agent, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if claim != nil {
		if exp, ok := s.claims[claim.ID]; ok && now.Before(exp) {
			return nil, ErrTokenUsed
		}
	}
	var cur *Agent
	if a, ok := s.agents[id]; ok {
		cur = a.clone()
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
	s.agents[id] = next.clone()
	return next.clone(), nil
}

// LiveSince implements Store: a memory store is never shared.
func (s *MemoryStore) LiveSince() time.Time { return time.Time{} }

// Watch implements Store: a memory store is never shared.
func (s *MemoryStore) Watch(context.Context) <-chan Event { return nil }

// Close implements Store.
func (s *MemoryStore) Close() error { return nil }
