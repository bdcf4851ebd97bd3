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

import (
	"context"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/client"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// healthRetryInterval is how long the agent leaves its exporters' health
// out of heartbeats after a server refused it: a server of 0.1.0 rejects
// the unknown field with 400. Past it the agent tries again, so that an
// upgraded server gets the health without an agent restart.
const healthRetryInterval = time.Hour

// exporterHealth returns the health of the relayed exporters, nil without
// a relay.
func (r *reloader) exporterHealth() []protocol.ExporterHealth {
	g := r.current.Load()
	if g == nil || g.relay == nil {
		return nil
	}
	return g.relay.Health()
}

// sendHeartbeat sends a heartbeat with the exporters' health. A server
// that refuses the health gets the heartbeat again without it, and no
// health until healthRetryInterval has passed.
func (l *lifecycle) sendHeartbeat(ctx context.Context) (*protocol.HeartbeatResponse, error) {
	var req protocol.HeartbeatRequest
	if l.health != nil && time.Now().After(l.healthRefusedUntil) {
		req.Exporters = l.health()
	}
	resp, err := l.client.Heartbeat(ctx, &req)
	if err == nil || req.Exporters == nil || !client.IsBadRequest(err) {
		return resp, err
	}
	l.healthRefusedUntil = time.Now().Add(healthRetryInterval)
	l.logger.Warn("Discovery server refused the exporters' health in the heartbeat; sending heartbeats without it for a while (a server of 0.1.0 does not know it)",
		"server", l.client.URL(), "retry_in", healthRetryInterval, "err", err)
	return l.client.Heartbeat(ctx, nil)
}
