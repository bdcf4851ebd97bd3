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
	"fmt"
	"hash/fnv"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// Errors returned by Registry operations.
var (
	// ErrRevoked means an operator revoked the agent.
	ErrRevoked = errors.New("agent revoked")
	// ErrSuperseded means the certificate is no longer the agent's current one,
	// because the agent enrolled again with another key.
	ErrSuperseded = errors.New("certificate superseded by a newer enrollment")
	// ErrDeregistered means the agent deregistered itself: it must register
	// again before it heartbeats or renews.
	ErrDeregistered = errors.New("agent deregistered")
)

// Config configures a Registry. Zero durations take the defaults
// documented on each field.
type Config struct {
	Store store.Store
	// TTL is how long an agent stays in http_sd without a heartbeat (5m).
	TTL time.Duration
	// HeartbeatInterval is what agents are told to use (TTL/4).
	HeartbeatInterval time.Duration
	// Retention is how long an expired agent is still listed for operators
	// before it is purged from the store (24h).
	Retention time.Duration
	// RevocationRetention is how long a revoked agent's record is kept so its
	// certificates stay refused; it must outlive every certificate and the
	// renewal grace window (31 days).
	RevocationRetention time.Duration
	// RenewGrace is how long after expiry a certificate may still renew by
	// proving possession of its key (30 days). The tombstone of an agent
	// that deregistered itself is kept until its last certificate is past
	// that window, since until then the certificate can register again.
	RenewGrace time.Duration
	// FlushInterval is how often batched heartbeats are written (5s).
	FlushInterval time.Duration
	// SweepInterval is how often states are recomputed (1s).
	SweepInterval time.Duration
	Metrics       *collector.Server
	Logger        *slog.Logger
	// Now is the clock; tests replace it.
	Now func() time.Time
}

func (c *Config) setDefaults() {
	if c.TTL <= 0 {
		c.TTL = 5 * time.Minute
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = c.TTL / 4
	}
	if c.Retention <= 0 {
		c.Retention = 24 * time.Hour
	}
	if c.RevocationRetention <= 0 {
		c.RevocationRetention = 31 * 24 * time.Hour
	}
	if c.RenewGrace <= 0 {
		c.RenewGrace = 30 * 24 * time.Hour
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = 5 * time.Second
	}
	if c.SweepInterval <= 0 {
		c.SweepInterval = time.Second
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// ShardCount splits the registry so that a change re-serializes about
// 1/ShardCount of the http_sd response instead of all of it.
const ShardCount = 256

// idLocks serializes writes per agent id so that the store and memory see
// them in the same order.
const idLocks = 64

// entry is one agent in memory. rec is replaced, never mutated
// (copy-on-write), so readers holding the pointer see a consistent record;
// LastSeen lives in atomics because heartbeats must not take the write lock.
type entry struct {
	rec      *Record
	lastSeen atomic.Int64 // unix nanoseconds
	flushed  atomic.Int64 // lastSeen value last written to the store
	status   atomic.Pointer[string]
	// health is what the heartbeats last said of the exporters (nil: never
	// reported); healthFlushed is the version (agentHealth.at) the store has.
	health        atomic.Pointer[agentHealth]
	healthFlushed atomic.Int64
	// listed says whether the agent is in http_sd; it changes under the
	// registry's write lock or, when a heartbeat revives an expired agent,
	// through revive (compare-and-swap).
	listed atomic.Bool
}

type shard struct {
	agents map[string]*entry
	// gen changes whenever the shard's http_sd output may have changed.
	gen atomic.Uint64
}

// Registry is the in-memory view of all agents, backed by a Store. Writes
// that need to be durable (register, renew, revoke, maintenance, deregister)
// go to the store first and are acknowledged only when it succeeded;
// heartbeats only touch memory and are flushed in batches.
type Registry struct {
	cfg     Config
	started time.Time

	mu     sync.RWMutex
	shards [ShardCount]shard
	locks  [idLocks]sync.Mutex
	// intern is guarded by mu (written under the write lock).
	intern *interner
	// upSets shares the health lists of agents whose exporters are all up.
	upSets upSets

	// gen is the sum of all changes: http_sd caches compare it first.
	gen     atomic.Uint64
	changed chan struct{}
	ready   atomic.Bool
}

// New creates a registry. Call Load before serving and Run to expire,
// purge and flush.
func New(cfg Config) *Registry {
	cfg.setDefaults()
	r := &Registry{cfg: cfg, changed: make(chan struct{}, 1), intern: newInterner()}
	for i := range r.shards {
		r.shards[i].agents = make(map[string]*entry)
	}
	return r
}

// Config returns the effective configuration, defaults applied.
func (r *Registry) Config() Config { return r.cfg }

func shardOf(id string) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return int(h.Sum32() % ShardCount)
}

func (r *Registry) lockID(id string) func() {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	l := &r.locks[h.Sum32()%idLocks]
	l.Lock()
	return l.Unlock
}

// Load reads every agent from the store. Agents restored here get one TTL of
// grace: a server outage must not make Prometheus drop targets that were
// healthy before it. The grace runs from now, or, when other replicas
// sharing the store were running, from when they started: agents could
// heartbeat through them meanwhile, so a host that stopped an hour ago is
// as expired here as there.
func (r *Registry) Load(ctx context.Context) error {
	start := time.Now()
	agents, err := r.cfg.Store.List(ctx)
	r.observeStore("list", start, err)
	if err != nil {
		return fmt.Errorf("load registry: %w", err)
	}
	now := r.cfg.Now()
	graceFrom := now
	if since := r.cfg.Store.LiveSince(); !since.IsZero() && since.Before(now) {
		graceFrom = since
	}
	r.mu.Lock()
	r.started = graceFrom
	for i := range agents {
		a := &agents[i]
		r.intern.agent(a)
		e := newEntry(a)
		r.shards[shardOf(a.ID)].agents[a.ID] = e
		e.listed.Store(r.inDiscovery(e, now))
	}
	r.mu.Unlock()
	r.bumpAll()
	r.ready.Store(true)
	r.cfg.Logger.Info("Registry loaded", "agents", len(agents), "grace_from", graceFrom)
	return nil
}

// Ready reports whether the registry has been loaded.
func (r *Registry) Ready() bool { return r.ready.Load() }

func newEntry(a *store.Agent) *entry {
	e := &entry{rec: newRecord(a)}
	e.lastSeen.Store(a.LastSeen.UnixNano())
	e.flushed.Store(a.LastSeen.UnixNano())
	if a.Status != "" {
		s := a.Status
		e.status.Store(&s)
	}
	e.takeHealth(a)
	return e
}

func (r *Registry) observeStore(op string, start time.Time, err error) {
	m := r.cfg.Metrics
	if m == nil {
		return
	}
	m.StoreSeconds.WithLabelValues(op).Observe(time.Since(start).Seconds())
	// A token already claimed or a record not there is the store's answer,
	// not its failure: it must not mark the store down or fire alerts.
	if err != nil && !errors.Is(err, store.ErrTokenUsed) && !errors.Is(err, store.ErrNotFound) {
		m.StoreErrors.WithLabelValues(op).Inc()
		m.StoreUp.Set(0)
		return
	}
	m.StoreUp.Set(1)
}

// Generation changes whenever http_sd output may have changed.
func (r *Registry) Generation() uint64 { return r.gen.Load() }

// Changed is signaled (without blocking, coalesced) after every change that
// may affect http_sd.
func (r *Registry) Changed() <-chan struct{} { return r.changed }

func (r *Registry) bump(shardIdx int) {
	r.shards[shardIdx].gen.Add(1)
	r.gen.Add(1)
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *Registry) bumpAll() {
	for i := range r.shards {
		r.shards[i].gen.Add(1)
	}
	r.gen.Add(1)
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

// Put durably stores a registration and then makes it visible. The returned
// error wraps the store's; nothing is visible when it fails.
func (r *Registry) Put(ctx context.Context, a *store.Agent) error {
	defer r.lockID(a.ID)()
	start := time.Now()
	err := r.cfg.Store.Put(ctx, a)
	r.observeStore("put", start, err)
	if err != nil {
		return fmt.Errorf("store agent %q: %w", a.ID, err)
	}
	r.apply(a)
	return nil
}

// apply installs a stored record in memory.
func (r *Registry) apply(a *store.Agent) {
	cp := a.Clone()
	idx := shardOf(a.ID)
	now := r.cfg.Now()
	r.mu.Lock()
	r.intern.agent(cp)
	e, ok := r.shards[idx].agents[a.ID]
	if !ok {
		e = newEntry(cp)
		r.shards[idx].agents[a.ID] = e
	} else {
		e.rec = newRecord(cp)
		e.takeHealth(cp)
		// A remote record may carry an older LastSeen than we saw locally.
		if ls := cp.LastSeen.UnixNano(); ls > e.lastSeen.Load() {
			e.lastSeen.Store(ls)
		}
	}
	e.listed.Store(r.inDiscovery(e, now))
	r.mu.Unlock()
	r.bump(idx)
}

// Update applies fn to a copy of the agent's stored record, stores it and
// makes it visible; see Modify. It returns ErrNotFound if the store has no
// record. fn may refuse by returning an error, and may be called more than
// once.
func (r *Registry) Update(ctx context.Context, id string, fn func(a *store.Agent) error) (*store.Agent, error) {
	return r.Modify(ctx, id, nil, func(cur *store.Agent) (*store.Agent, error) {
		if cur == nil {
			return nil, store.ErrNotFound
		}
		if err := fn(cur); err != nil {
			return nil, err
		}
		return cur, nil
	})
}

// Modify is a read-modify-write of one agent in the store (Store.Update):
// fn works on the stored record, never on this replica's copy, which may
// lag behind a change another replica made. The record fn gets carries the
// newest LastSeen this replica knows. Memory then follows the store: the
// record written, or, when fn refused, the record fn was shown. With claim,
// the write also uses up a single-use token.
func (r *Registry) Modify(ctx context.Context, id string, claim *store.TokenClaim, fn store.UpdateFunc) (*store.Agent, error) {
	defer r.lockID(id)()
	var (
		shown *store.Agent
		fnErr error
	)
	start := time.Now()
	out, err := r.cfg.Store.Update(ctx, id, claim, func(cur *store.Agent) (*store.Agent, error) {
		shown, fnErr = nil, nil
		if cur != nil {
			if ls := r.lastSeen(id); ls > cur.LastSeen.UnixNano() {
				cur.LastSeen = time.Unix(0, ls)
			}
			shown = cur.Clone()
		}
		next, err := fn(cur)
		fnErr = err
		return next, err
	})
	// fn's refusal is an answer of the store, not its failure.
	refused := err != nil && fnErr != nil && errors.Is(err, fnErr)
	if refused {
		r.observeStore("update", start, nil)
	} else {
		r.observeStore("update", start, err)
	}
	switch {
	case err == nil && out == nil:
		r.remove(id)
		return nil, nil
	case err == nil:
		r.apply(out)
		return out.Clone(), nil
	case refused:
		if shown == nil {
			r.remove(id)
		} else {
			r.apply(shown)
		}
		return nil, err
	}
	return nil, fmt.Errorf("store agent %q: %w", id, err)
}

// lastSeen returns the newest LastSeen of an agent in memory (unix
// nanoseconds), 0 if there is none.
func (r *Registry) lastSeen(id string) int64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if e, ok := r.shards[shardOf(id)].agents[id]; ok {
		return e.lastSeen.Load()
	}
	return 0
}

// Delete removes an agent from the store and from memory.
func (r *Registry) Delete(ctx context.Context, id string) error {
	defer r.lockID(id)()
	start := time.Now()
	err := r.cfg.Store.Delete(ctx, id)
	r.observeStore("delete", start, err)
	if err != nil {
		return fmt.Errorf("delete agent %q: %w", id, err)
	}
	r.remove(id)
	return nil
}

func (r *Registry) remove(id string) {
	idx := shardOf(id)
	r.mu.Lock()
	_, ok := r.shards[idx].agents[id]
	delete(r.shards[idx].agents, id)
	r.mu.Unlock()
	if ok {
		r.bump(idx)
	}
}

// Get returns a copy of an agent with its current LastSeen and state.
func (r *Registry) Get(id string) (discovery.AgentView, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.shards[shardOf(id)].agents[id]
	if !ok {
		return discovery.AgentView{}, false
	}
	return r.view(e, r.cfg.Now()), true
}

// List returns every agent sorted by hostname, then id.
func (r *Registry) List() []discovery.AgentView {
	now := r.cfg.Now()
	r.mu.RLock()
	out := make([]discovery.AgentView, 0, r.countLocked())
	for i := range r.shards {
		for _, e := range r.shards[i].agents {
			out = append(out, r.view(e, now))
		}
	}
	r.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Hostname != out[j].Hostname {
			return out[i].Hostname < out[j].Hostname
		}
		return out[i].ID < out[j].ID
	})
	return out
}

func (r *Registry) countLocked() int {
	n := 0
	for i := range r.shards {
		n += len(r.shards[i].agents)
	}
	return n
}

func (r *Registry) view(e *entry, now time.Time) discovery.AgentView {
	a := e.rec.agent()
	a.LastSeen = time.Unix(0, e.lastSeen.Load()).UTC()
	if s := e.status.Load(); s != nil {
		a.Status = *s
	}
	h := e.health.Load()
	a.ExporterHealth = h.report(e.rec)
	if h != nil {
		a.HealthReportedAt = fromUnixNanos(h.at)
	}
	st := r.state(e, now)
	return discovery.AgentView{Agent: *a, State: st, GraceUntil: r.graceUntil(e, st, now)}
}

// Heartbeat records that the agent holding a certificate with the given
// serial is alive, with what it reported of its exporters (nil: nothing,
// as from agents before exporter health; see ReportHealth). It never
// touches the store.
//
// The read lock is held throughout: e.rec is replaced under the write lock,
// and a revocation or maintenance change applied between the serial check
// and the revival below must not be overtaken by this heartbeat.
func (r *Registry) Heartbeat(id, serial, status string, exporters []protocol.ExporterHealth) error {
	now := r.cfg.Now()
	idx := shardOf(id)
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.shards[idx].agents[id]
	if !ok {
		return store.ErrNotFound
	}
	if err := e.rec.checkActive(serial, now); err != nil {
		return err
	}
	e.lastSeen.Store(now.UnixNano())
	r.recordHealth(e, now.UnixNano(), exporters)
	if status != "" {
		if old := e.status.Load(); old == nil || *old != status {
			e.status.Store(&status)
		}
	}
	// An agent that came back after expiring re-enters http_sd at once.
	if !e.listed.Load() && r.inDiscovery(e, now) && e.listed.CompareAndSwap(false, true) {
		r.bump(idx)
	}
	return nil
}

// CheckCertificate reports whether the certificate with serial may act for
// agent id: ErrNotFound, ErrRevoked, ErrSuperseded, ErrDeregistered or nil.
func (r *Registry) CheckCertificate(id, serial string) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	e, ok := r.shards[shardOf(id)].agents[id]
	if !ok {
		return store.ErrNotFound
	}
	return e.rec.checkActive(serial, r.cfg.Now())
}

// state computes an agent's state at now. An agent restored at start-up is
// not expired before one TTL after the start, but the grace does not make
// it healthy: without a heartbeat since, it is stale, so that no page shows
// a host as healthy whose last heartbeat is older than the stale bound.
func (r *Registry) state(e *entry, now time.Time) discovery.AgentState {
	a := e.rec
	if a.revoked() {
		return discovery.StateRevoked
	}
	if a.Deregistered {
		return discovery.StateDeregistered
	}
	last := time.Unix(0, e.lastSeen.Load())
	graced := last
	if graced.Before(r.started) {
		graced = r.started
	}
	switch {
	case now.Sub(graced) > r.cfg.TTL:
		return discovery.StateExpired
	case a.Maintenance:
		return discovery.StateMaintenance
	case now.Sub(last) > 2*r.cfg.HeartbeatInterval:
		return discovery.StateStale
	default:
		return discovery.StateHealthy
	}
}

func (r *Registry) inDiscovery(e *entry, now time.Time) bool {
	return r.state(e, now).Listed()
}

// Run expires, purges and flushes until ctx ends, then flushes once more.
func (r *Registry) Run(ctx context.Context) {
	sweep := time.NewTicker(r.cfg.SweepInterval)
	defer sweep.Stop()
	flush := time.NewTicker(r.cfg.FlushInterval)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			// The parent context is gone; give the last flush its own deadline.
			fctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			r.Flush(fctx)
			cancel()
			return
		case <-sweep.C:
			r.Sweep(ctx)
		case <-flush.C:
			r.Flush(ctx)
		}
	}
}

// Sweep recomputes every agent's state: agents whose TTL ran out leave
// http_sd, gauges are updated, and records past retention are purged.
func (r *Registry) Sweep(ctx context.Context) {
	now := r.cfg.Now()
	counts := make(map[discovery.AgentState]int, 5)
	var purge []string
	var expired int
	r.mu.RLock()
	for i := range r.shards {
		changed := false
		for id, e := range r.shards[i].agents {
			st := r.state(e, now)
			counts[st]++
			listed := st.Listed()
			if e.listed.Load() != listed {
				e.listed.Store(listed)
				changed = true
				if st == discovery.StateExpired {
					expired++
					r.cfg.Logger.Info("Agent expired", "agent_id", id, "hostname", e.rec.Hostname)
				}
			}
			if r.purgeable(e, st, now) {
				purge = append(purge, id)
			}
		}
		if changed {
			r.bump(i)
		}
	}
	r.mu.RUnlock()
	if m := r.cfg.Metrics; m != nil {
		for _, s := range discovery.AgentStates() {
			m.AgentsByState.WithLabelValues(string(s)).Set(float64(counts[s]))
		}
		m.Expirations.Add(float64(expired))
	}
	for _, id := range purge {
		if err := r.purge(ctx, id, now); err != nil {
			r.cfg.Logger.Error("Purging agent failed", "agent_id", id, "err", err)
			return
		}
	}
}

func (r *Registry) purgeable(e *entry, st discovery.AgentState, now time.Time) bool {
	switch st {
	case discovery.StateRevoked:
		return now.Sub(fromUnixNanos(e.rec.revokedAt)) > r.cfg.RevocationRetention
	case discovery.StateDeregistered:
		// Until then a certificate of the agent can register again, over
		// mTLS or by proof of its key, and must find what it left behind.
		return r.pastRenewGrace(e.rec.certNotAfter, e.rec.prevCertNotAfter, now)
	case discovery.StateExpired:
		last := time.Unix(0, e.lastSeen.Load())
		if last.Before(r.started) {
			last = r.started
		}
		return now.Sub(last) > r.cfg.TTL+r.cfg.Retention
	}
	return false
}

// errNotPurgeable keeps a record that changed since the sweep judged it.
var errNotPurgeable = errors.New("agent changed since the sweep")

// purge deletes an agent unless it changed state since the sweep looked, as
// stored: another replica may have seen it register again. An expired agent
// becomes a tombstone instead while a certificate of it can still register
// (see retire).
func (r *Registry) purge(ctx context.Context, id string, now time.Time) error {
	kept, err := r.Modify(ctx, id, nil, func(cur *store.Agent) (*store.Agent, error) {
		if cur == nil {
			return nil, nil
		}
		e := newEntry(cur)
		if !r.purgeable(e, r.state(e, now), now) {
			return nil, errNotPurgeable
		}
		return r.retire(cur, now), nil
	})
	if errors.Is(err, errNotPurgeable) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("purge agent %q: %w", id, err)
	}
	if kept != nil {
		r.cfg.Logger.Info("Expired agent kept as a tombstone until its certificates can no longer register", "agent_id", id)
		return nil
	}
	if m := r.cfg.Metrics; m != nil {
		m.Purges.Inc()
	}
	r.cfg.Logger.Info("Agent purged", "agent_id", id)
	return nil
}

// Flush writes every LastSeen that moved since the previous flush in one
// store operation. A failed flush is retried with the next one. With
// nothing to write, it checks that a store that can be unreachable answers.
func (r *Registry) Flush(ctx context.Context) {
	r.flushHealth(ctx)
	var touches []store.Touch
	var entries []*entry
	r.mu.RLock()
	for i := range r.shards {
		for id, e := range r.shards[i].agents {
			ls := e.lastSeen.Load()
			if ls != e.flushed.Load() {
				touches = append(touches, store.Touch{ID: id, LastSeen: time.Unix(0, ls)})
				entries = append(entries, e)
			}
		}
	}
	r.mu.RUnlock()
	if len(touches) == 0 {
		r.probeStore(ctx)
		return
	}
	start := time.Now()
	err := r.cfg.Store.Touch(ctx, touches)
	r.observeStore("touch", start, err)
	if err != nil {
		r.cfg.Logger.Error("Flushing heartbeats failed", "agents", len(touches), "err", err)
		return
	}
	for i, e := range entries {
		e.flushed.Store(touches[i].LastSeen.UnixNano())
	}
	if m := r.cfg.Metrics; m != nil {
		m.HeartbeatFlushSize.Observe(float64(len(touches)))
	}
}

// probeStore asks a store that can be unreachable whether it answers, so
// that baremetal_sd_store_up tells the truth while nothing is written.
func (r *Registry) probeStore(ctx context.Context) {
	h, ok := r.cfg.Store.(store.HealthChecker)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	start := time.Now()
	err := h.Healthy(ctx)
	r.observeStore("health", start, err)
}

// ApplyEvent installs a change another replica made to a shared store.
// Puts and deletes take the agent's write lock, like local writes, so a
// local write in flight for the same agent is not undone by an older
// remote one arriving in between.
func (r *Registry) ApplyEvent(ev store.Event) {
	switch ev.Type {
	case store.EventPut:
		unlock := r.lockID(ev.Agent.ID)
		r.apply(&ev.Agent)
		unlock()
	case store.EventDelete:
		unlock := r.lockID(ev.Agent.ID)
		r.remove(ev.Agent.ID)
		unlock()
	case store.EventTouch:
		idx := shardOf(ev.Agent.ID)
		// Held throughout, as in Heartbeat.
		r.mu.RLock()
		defer r.mu.RUnlock()
		e, ok := r.shards[idx].agents[ev.Agent.ID]
		if !ok {
			return
		}
		ls := ev.Agent.LastSeen.UnixNano()
		for {
			cur := e.lastSeen.Load()
			if ls <= cur || e.lastSeen.CompareAndSwap(cur, ls) {
				break
			}
		}
		// What another replica already wrote needs no flush from us.
		for {
			cur := e.flushed.Load()
			if ls <= cur || e.flushed.CompareAndSwap(cur, ls) {
				break
			}
		}
		if !e.listed.Load() && r.inDiscovery(e, r.cfg.Now()) && e.listed.CompareAndSwap(false, true) {
			r.bump(idx)
		}
	}
}

// EachListed calls fn for every agent of one shard that is in http_sd, and
// returns the shard generation the output corresponds to. Records are
// immutable, so fn may read a without copying it; fn runs under the
// registry's read lock and must not call back into the registry.
func (r *Registry) EachListed(shardIdx int, fn func(a *Record)) uint64 {
	r.mu.RLock()
	defer r.mu.RUnlock()
	gen := r.shards[shardIdx].gen.Load()
	for _, e := range r.shards[shardIdx].agents {
		if e.listed.Load() {
			fn(e.rec)
		}
	}
	return gen
}

// ShardGeneration changes whenever the http_sd output of shard i may have
// changed; a cached rendering of the shard is current while it stays.
func (r *Registry) ShardGeneration(i int) uint64 { return r.shards[i].gen.Load() }
