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

// AgentView is one agent in GET /api/v1/agents.
type AgentView struct {
	store.Agent
	State AgentState `json:"state"`
	// GraceUntil is set while only the restart grace keeps the agent in
	// http_sd: its last heartbeat is older than the TTL, and it is listed
	// until then unless it heartbeats again.
	GraceUntil time.Time `json:"grace_until,omitzero"`
}
