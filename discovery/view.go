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

package discovery

import (
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// AgentState is how the registry currently sees an agent.
type AgentState string

// Agent states, as reported by the admin API, the status page and metrics.
const (
	StateHealthy     AgentState = "healthy"
	StateStale       AgentState = "stale"
	StateExpired     AgentState = "expired"
	StateRevoked     AgentState = "revoked"
	StateMaintenance AgentState = "maintenance"
	// StateDeregistered is the tombstone of an agent that deregistered
	// itself. It is listed to admins but is not one of AgentStates: it is
	// not part of the fleet, its counts or its metrics.
	StateDeregistered AgentState = "deregistered"
)

// AgentStates lists every state of an agent of the fleet, in display order.
func AgentStates() []AgentState {
	return []AgentState{StateHealthy, StateStale, StateMaintenance, StateExpired, StateRevoked}
}

// Listed reports whether agents in state s are in http_sd and may be
// reached through a tunnel.
func (s AgentState) Listed() bool {
	return s != StateExpired && s != StateRevoked && s != StateDeregistered
}

// AgentView is one agent in GET /api/v1/agents.
type AgentView struct {
	store.Agent
	State AgentState `json:"state"`
	// GraceUntil is set while only the restart grace keeps the agent in
	// http_sd: its last heartbeat is older than the TTL, and it is listed
	// until then unless it heartbeats again.
	GraceUntil time.Time `json:"grace_until,omitzero"`
}

// Summary is the fleet at a glance: agents per state and the first of them
// in display order. It is what a status page needs, without copying the
// whole registry.
type Summary struct {
	Total  int
	Counts map[AgentState]int
	// Matching is how many agents the filter selected; Agents holds the
	// first of them by hostname, then id.
	Matching int
	Agents   []AgentView
}

// ConsumerFetch is what the consumer log knows of one consumer's fetches of
// one scrape shard.
type ConsumerFetch struct {
	// Consumer is "cert:<name>" for a client certificate, "token:<id>" for
	// a bearer token, "anonymous", or "other" past the bounds.
	Consumer string
	// Shard is "I/N", "all" for the whole list, "invalid" for a query that
	// could not be parsed, or "other" past the bounds.
	Shard string
	// Query is the raw query string of the last request, truncated.
	Query      string
	Requests   uint64
	LastFetch  time.Time
	LastStatus int
}

// SummaryFilter selects the agents of a Summary. The zero value selects
// every agent.
type SummaryFilter struct {
	// State, when set, is the only state selected.
	State AgentState
	// Hostname, when set, must be part of the agent's hostname, in any case.
	Hostname string
	// LabelName, when set, is a label the agent must have, with the value
	// LabelValue.
	LabelName, LabelValue string
	// ExporterDown selects agents with at least one exporter reported down.
	ExporterDown bool
}
