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

package store

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// ErrNotFound is returned by a Store when an agent does not exist.
var ErrNotFound = errors.New("not found")

// ErrTokenUsed is returned by Store.Update when the single-use token it was
// to claim has been claimed before.
var ErrTokenUsed = errors.New("token already used")

// ErrUnavailable wraps store errors that mean the backend cannot be reached.
// Callers answer such requests with 503 instead of acknowledging them.
var ErrUnavailable = errors.New("store unavailable")

// Agent is one registration as it is stored. Everything but LastSeen changes
// only on register, renew, revoke, maintenance and deregister; LastSeen moves
// with every heartbeat and is persisted separately (Store.Touch) so that
// heartbeats never rewrite whole records.
type Agent struct {
	ID       string `json:"id"`
	Hostname string `json:"hostname"`
	Address  string `json:"address"`
	Port     int    `json:"port"`
	// Labels are kept as Prometheus' own label set: sorted, immutable and,
	// with the default stringlabels build, one string per agent instead of a
	// map (about 300 bytes less per agent). It encodes as a JSON object.
	Labels    labels.Labels       `json:"labels,omitzero"`
	Exporters []protocol.Exporter `json:"exporters,omitempty"`
	// PinnedLabels are the labels the enrollment token fixed; a
	// re-registration by certificate must keep them.
	PinnedLabels labels.Labels `json:"pinned_labels,omitzero"`

	// CertSerial is the serial number (hex) of the agent's current certificate;
	// PrevCertSerial stays valid until PrevCertNotAfter so that connections
	// opened before a renewal keep working.
	CertSerial       string    `json:"cert_serial"`
	CertNotAfter     time.Time `json:"cert_not_after"`
	PrevCertSerial   string    `json:"prev_cert_serial,omitempty"`
	PrevCertNotAfter time.Time `json:"prev_cert_not_after,omitzero"`
	// KeyFingerprint is the hex SHA-256 of the agent's public key (SPKI DER);
	// it lets a host whose certificate expired prove it still holds the key.
	KeyFingerprint string `json:"key_fingerprint"`

	RegisteredAt time.Time `json:"registered_at"`
	LastSeen     time.Time `json:"last_seen"`
	Status       string    `json:"status,omitempty"`
	Maintenance  bool      `json:"maintenance,omitempty"`
	RevokedAt    time.Time `json:"revoked_at,omitzero"`
	// Deregistered marks a tombstone: the agent deregistered itself, but
	// what it may not change (pinned labels, maintenance, certificate
	// serials, revocation) is kept until its last certificate can no longer
	// be renewed, so that registering again with that certificate brings
	// all of it back and an operator can still revoke it.
	Deregistered bool `json:"deregistered,omitempty"`
	// Tunnel marks an agent that Prometheus scrapes through the servers'
	// tunnels (RegisterRequest.Tunnel).
	Tunnel bool `json:"tunnel,omitempty"`
	// ExporterHealth is the health of the agent's exporters as its
	// heartbeats last reported a change of it; nil for agents that report
	// none. HealthReportedAt is when that heartbeat arrived (server time):
	// of two versions, the one reported later wins.
	ExporterHealth   []protocol.ExporterHealth `json:"exporter_health,omitempty"`
	HealthReportedAt time.Time                 `json:"health_reported_at,omitzero"`
}

// Revoked reports whether an operator revoked the agent.
func (a *Agent) Revoked() bool { return !a.RevokedAt.IsZero() }

// Clone deep-copies an agent record.
func (a *Agent) Clone() *Agent {
	cp := *a // labels.Labels are immutable values
	if a.Exporters != nil {
		cp.Exporters = append([]protocol.Exporter(nil), a.Exporters...)
	}
	if a.ExporterHealth != nil {
		cp.ExporterHealth = append([]protocol.ExporterHealth(nil), a.ExporterHealth...)
	}
	return &cp
}

// TokenClaim uses up a single-use enrollment token together with the
// registration it admits.
type TokenClaim struct {
	// ID is the token's jti.
	ID string
	// Expires is when the token stops verifying; the claim may be forgotten
	// after it.
	Expires time.Time
}

// UpdateFunc computes an agent's new record from its stored one, which is
// nil when there is none. Returning nil deletes the record; returning an
// error stores nothing and is passed on unchanged. A store may call it more
// than once (when the record changed meanwhile), so it must not have other
// effects.
type UpdateFunc func(cur *Agent) (*Agent, error)

// Touch is one batched heartbeat: the newest LastSeen of an agent.
type Touch struct {
	ID       string
	LastSeen time.Time
}

// EventType says what changed in a store.
type EventType int

// Event types delivered by Store.Watch.
const (
	EventPut EventType = iota
	EventDelete
	EventTouch
)

// Event is one change made to a store, possibly by another server replica.
type Event struct {
	Type EventType
	// Agent is the full record for EventPut, the id and LastSeen for
	// EventTouch and the id only for EventDelete.
	Agent Agent
}

// Store persists the registry. Implementations must be safe for concurrent use.
//
// The registry keeps everything in memory and uses the store for durability
// and, with a shared backend such as etcd, to learn about changes made by
// other replicas through Watch. A write returns only once it is durable.
type Store interface {
	// List returns every stored agent, with its newest persisted LastSeen.
	List(ctx context.Context) ([]Agent, error)
	// Put creates or replaces an agent record (LastSeen included) whatever
	// is stored: for records nobody else writes, such as bulk loads.
	// Registrations and changes go through Update.
	Put(ctx context.Context, a *Agent) error
	// Update is a read-modify-write of one agent: fn gets a copy of the
	// stored record and what it returns is stored, atomically with respect
	// to every other writer of the record, other server replicas included.
	// With claim, the same atomic write also uses up the single-use token:
	// if it was claimed before, Update returns ErrTokenUsed without calling
	// fn or storing anything, and a failed write leaves the token unused.
	// Update returns the stored record, nil if fn deleted it.
	Update(ctx context.Context, id string, claim *TokenClaim, fn UpdateFunc) (*Agent, error)
	// Delete removes an agent; deleting a missing agent is not an error.
	Delete(ctx context.Context, id string) error
	// Touch persists LastSeen for many agents in one write. Unknown ids are
	// skipped: an agent deleted meanwhile is not brought back.
	Touch(ctx context.Context, touches []Touch) error
	// LiveSince returns, once List has run, since when the other processes
	// that share the store and were running at that List (server replicas
	// on one etcd cluster) have been recording heartbeats, or the zero time
	// if none was: a store of one process returns zero. Agents restored by
	// List get the restart grace only from then on, because while another
	// replica ran they could heartbeat through it.
	LiveSince() time.Time
	// Watch delivers changes made through other Store instances sharing the
	// same backend until ctx ends. Stores that cannot be shared return a nil
	// channel.
	Watch(ctx context.Context) <-chan Event
	// Close releases the store.
	Close() error
}

// HealthChecker is a Store whose backend can be unreachable and that can
// say whether it answers (etcd). Readiness and baremetal_sd_store_up ask it
// rather than waiting for a write to fail.
type HealthChecker interface {
	Healthy(ctx context.Context) error
}
