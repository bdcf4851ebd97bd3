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

package registry

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// maxHealthWritesPerFlush bounds how many agents' changed exporter health
// one flush writes to the store, one record each: a fleet-wide exporter
// outage must not turn into 100,000 writes at once. Memory, and so this
// replica's status page, agent list and metrics, have the change at once;
// the store (restarts, other replicas) gets the rest with later flushes.
const maxHealthWritesPerFlush = 200

// Exporter states in memory; the zero value is unknown.
const (
	healthUnknown uint8 = iota
	healthUp
	healthDown
)

// exporterHealth is one exporter's health as the registry keeps it: 56
// bytes, the name shared with the agent's record.
type exporterHealth struct {
	name, reason      string
	since, lastResult int64 // unix nanoseconds, 0 for none
	state             uint8
}

// agentHealth is what an agent's heartbeats last said of its exporters.
// It is immutable: a heartbeat installs a new one.
type agentHealth struct {
	// at is when (server time, unix nanoseconds) a heartbeat last changed
	// an exporter's state; of two versions, the later one wins.
	at   int64
	exps []exporterHealth
}

func stateCode(s string) uint8 {
	switch s {
	case protocol.ExporterUp:
		return healthUp
	case protocol.ExporterDown:
		return healthDown
	}
	return healthUnknown
}

func stateName(c uint8) string {
	switch c {
	case healthUp:
		return protocol.ExporterUp
	case healthDown:
		return protocol.ExporterDown
	}
	return protocol.ExporterUnknown
}

// newAgentHealth keeps the reports of the exporters rec registered, with
// their names shared with rec: the registration, not the heartbeat, says
// which exporters an agent has, so a heartbeat cannot add names (and
// metric series) of its own, and a bare "unknown" takes no memory.
// Reports were validated.
func newAgentHealth(rec *Record, at int64, hs []protocol.ExporterHealth) *agentHealth {
	h := &agentHealth{at: at, exps: make([]exporterHealth, 0, len(hs))}
	for _, rep := range hs {
		if rep.State == protocol.ExporterUnknown && rep.Reason == "" && rep.Since.IsZero() && rep.LastResult.IsZero() {
			continue // what report says of an exporter it has nothing on
		}
		for _, e := range rec.Exporters {
			if e.Name == rep.Name {
				h.exps = append(h.exps, exporterHealth{
					name:       e.Name,
					reason:     rep.Reason,
					since:      unixNanos(rep.Since),
					lastResult: unixNanos(rep.LastResult),
					state:      stateCode(rep.State),
				})
				break
			}
		}
	}
	return h
}

// sameStates reports whether h and o say the same of every exporter but
// the reason and the time of the last result, which move without a change
// worth a store write.
func (h *agentHealth) sameStates(o *agentHealth) bool {
	if len(h.exps) != len(o.exps) {
		return false
	}
	for i := range h.exps {
		a, b := &h.exps[i], &o.exps[i]
		if a.name != b.name || a.state != b.state || a.since != b.since {
			return false
		}
	}
	return true
}

// report returns the health of every exporter rec registered, in its
// order: what h says, unknown for the others (and for all of them when h
// is nil, an agent that reports no health).
func (h *agentHealth) report(rec *Record) []protocol.ExporterHealth {
	if len(rec.Exporters) == 0 {
		return nil
	}
	out := make([]protocol.ExporterHealth, len(rec.Exporters))
	for i, e := range rec.Exporters {
		out[i] = protocol.ExporterHealth{Name: e.Name, State: protocol.ExporterUnknown}
		if x := h.find(e.Name); x != nil {
			out[i].State = stateName(x.state)
			out[i].Reason = x.reason
			out[i].Since = fromUnixNanos(x.since)
			out[i].LastResult = fromUnixNanos(x.lastResult)
		}
	}
	return out
}

// find returns the health of exporter name, nil if there is none.
func (h *agentHealth) find(name string) *exporterHealth {
	if h == nil {
		return nil
	}
	for i := range h.exps {
		if h.exps[i].name == name {
			return &h.exps[i]
		}
	}
	return nil
}

// storedHealth is the health a stored record carries, nil for none.
func storedHealth(rec *Record, a *store.Agent) *agentHealth {
	if a.ExporterHealth == nil && a.HealthReportedAt.IsZero() {
		return nil
	}
	return newAgentHealth(rec, unixNanos(a.HealthReportedAt), a.ExporterHealth)
}

// takeHealth installs the health of a stored record in e unless e holds a
// later one, and notes that the store has the record's version. Callers
// hold the agent's id lock.
func (e *entry) takeHealth(a *store.Agent) {
	stored := unixNanos(a.HealthReportedAt)
	e.healthFlushed.Store(stored)
	if cur := e.health.Load(); cur != nil && cur.at > stored {
		return
	}
	e.health.Store(storedHealth(e.rec, a))
}

// ReportHealth records the exporter health an agent's heartbeat carried,
// validated by the caller. An agent the registry no longer has is ignored:
// Heartbeat has answered for it. A change of an exporter's state is
// written to the store by the next flushes; a new reason or result time
// alone is kept in memory.
func (r *Registry) ReportHealth(id string, hs []protocol.ExporterHealth) {
	if hs == nil {
		return // an agent that reports no health keeps what it had
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e, ok := r.shards[shardOf(id)].agents[id]; ok {
		r.recordHealth(e, r.cfg.Now().UnixNano(), hs)
	}
}

// recordHealth swaps in e's new health; the caller holds r.mu for reading.
func (r *Registry) recordHealth(e *entry, now int64, hs []protocol.ExporterHealth) {
	if hs == nil {
		return
	}
	for {
		cur := e.health.Load()
		next := newAgentHealth(e.rec, now, hs)
		r.upSets.share(next)
		if cur != nil && cur.sameStates(next) {
			next.at = cur.at
		}
		if e.health.CompareAndSwap(cur, next) {
			return
		}
	}
}

// upSets shares one exporter list among the agents whose exporters are all
// up, the common case: such an agent's health is then its 32 bytes alone,
// instead of 96 with one exporter of its own. The times of up exporters are
// not kept for that: the state of a healthy exporter is what matters, and
// when it last changed is in the store's record of the last change. Like
// the interner, it holds at most maxInterned lists; past that, lists are
// kept per agent.
type upSets struct {
	mu    sync.Mutex
	lists map[string][]exporterHealth
	key   strings.Builder
}

// share replaces h's exporters by a shared list when they are all up
// without a reason.
func (u *upSets) share(h *agentHealth) {
	if len(h.exps) == 0 {
		return
	}
	for i := range h.exps {
		if h.exps[i].state != healthUp || h.exps[i].reason != "" {
			return
		}
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	u.key.Reset()
	for i := range h.exps {
		u.key.WriteString(h.exps[i].name)
		u.key.WriteByte(0)
	}
	k := u.key.String()
	if shared, ok := u.lists[k]; ok {
		h.exps = shared
		return
	}
	list := make([]exporterHealth, len(h.exps))
	for i := range h.exps {
		list[i] = exporterHealth{name: h.exps[i].name, state: healthUp}
	}
	h.exps = list
	if u.lists == nil {
		u.lists = make(map[string][]exporterHealth)
	}
	if len(u.lists) < maxInterned {
		u.lists[k] = list
	}
}

// errHealthNotNewer keeps a record whose stored health is as new as ours.
var errHealthNotNewer = errors.New("stored exporter health is not older")

// flushHealth writes the exporter health that changed since the store last
// had it, for at most maxHealthWritesPerFlush agents.
func (r *Registry) flushHealth(ctx context.Context) {
	type pending struct {
		id string
		h  *agentHealth
	}
	var todo []pending
	r.mu.RLock()
	for i := range r.shards {
		for id, e := range r.shards[i].agents {
			if h := e.health.Load(); h != nil && h.at > e.healthFlushed.Load() && len(todo) < maxHealthWritesPerFlush {
				todo = append(todo, pending{id, h})
			}
		}
	}
	r.mu.RUnlock()
	for _, p := range todo {
		_, err := r.Modify(ctx, p.id, nil, func(cur *store.Agent) (*store.Agent, error) {
			if cur == nil {
				return nil, store.ErrNotFound
			}
			if !cur.HealthReportedAt.Before(time.Unix(0, p.h.at)) {
				return nil, errHealthNotNewer
			}
			rec := newRecord(cur)
			cur.ExporterHealth = p.h.report(rec)
			cur.HealthReportedAt = time.Unix(0, p.h.at).UTC()
			return cur, nil
		})
		switch {
		case err == nil, errors.Is(err, errHealthNotNewer), errors.Is(err, store.ErrNotFound):
		default:
			r.cfg.Logger.Error("Writing exporter health failed", "agent_id", p.id, "err", err)
			return
		}
	}
}
