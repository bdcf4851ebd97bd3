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

package agent

import "time"

// serverTiming merges the TTL and heartbeat interval of a reply with what
// the agent knows: a value the reply lacks (zero, from an older server)
// keeps the one the servers said before.
func (l *lifecycle) serverTiming(ttlSeconds, intervalSeconds int) (ttl, interval int) {
	ttl, interval = l.persisted.TTLSeconds, l.persisted.HeartbeatIntervalSeconds
	if ttlSeconds > 0 {
		ttl = ttlSeconds
	}
	if intervalSeconds > 0 {
		interval = intervalSeconds
	}
	return ttl, interval
}

// noteServerTiming takes the TTL and heartbeat interval of a heartbeat
// reply. Both clients bound one request to one server by them, and
// agent.json keeps them, so that after a restart the first heartbeat is
// bounded too: otherwise it waits out the full request timeout (30 s) on a
// frozen server before it tries the next, longer than a short TTL leaves.
// The file is written only when a server says something new, so heartbeats
// do not cost a write each; a failed write is logged once and tried again
// with the next reply.
func (l *lifecycle) noteServerTiming(ttlSeconds, intervalSeconds int) {
	ttl, interval := l.serverTiming(ttlSeconds, intervalSeconds)
	l.client.Observe(ttl, interval)
	l.anon.Observe(ttl, interval)
	if ttl == l.persisted.TTLSeconds && interval == l.persisted.HeartbeatIntervalSeconds {
		return
	}
	p := l.persisted
	p.TTLSeconds, p.HeartbeatIntervalSeconds = ttl, interval
	p.UpdatedAt = time.Now().UTC()
	if err := savePersisted(l.path(StateFile), p); err != nil {
		if !l.timingWriteFailed {
			l.timingWriteFailed = true
			l.logger.Warn("Could not store the servers' TTL and heartbeat interval; after a restart, the first requests wait up to the request timeout per server",
				"path", l.path(StateFile), "err", err)
		}
		return
	}
	l.timingWriteFailed = false
	l.persisted = p
}
