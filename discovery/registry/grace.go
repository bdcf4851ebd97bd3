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
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery"
)

// graceUntil returns, for an agent in state st that only the restart grace
// keeps in http_sd (its last heartbeat is older than the TTL), when the
// grace ends; the zero time for every other agent.
func (r *Registry) graceUntil(e *entry, st discovery.AgentState, now time.Time) time.Time {
	if !st.Listed() {
		return time.Time{}
	}
	last := time.Unix(0, e.lastSeen.Load())
	if now.Sub(last) <= r.cfg.TTL || !last.Before(r.started) {
		return time.Time{}
	}
	return r.started.Add(r.cfg.TTL).UTC()
}
