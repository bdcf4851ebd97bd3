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
	"net/http"
	"strings"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// TestRun_HeartbeatsCarryExporterHealth: heartbeats say what the last relay
// of each exporter gave, and a server of 0.1.0, which refuses the field,
// still gets heartbeats, without it.
func TestRun_HeartbeatsCarryExporterHealth(t *testing.T) {
	for _, legacy := range []bool{false, true} {
		name := "current server"
		if legacy {
			name = "server of 0.1.0"
		}
		t.Run(name, func(t *testing.T) {
			h := newHarness(t)
			h.fake.legacyHeartbeat.Store(legacy)
			cfg := h.config()
			// Nothing listens on port 1: the relay fails with "connect".
			cfg.RelayConfigFile = writeRelayConfig(t, "node", "http://127.0.0.1:1/metrics")
			h.enrolled(cfg)
			if resp, _, err := h.get("/exporters/node/metrics"); err != nil || resp.StatusCode != http.StatusBadGateway {
				t.Fatalf("relay of a dead exporter: %v, %v; want 502", resp, err)
			}
			if legacy {
				beats := h.fake.count("heartbeat")
				h.waitFor("heartbeats after the refusal", func() bool {
					return h.fake.count("heartbeat refused") >= 1 && h.fake.count("heartbeat") >= beats+3
				})
				if n := h.fake.count("heartbeat refused"); n != 1 {
					t.Fatalf("%d heartbeats refused, want 1: the agent must stop sending the health", n)
				}
				if !strings.Contains(h.logs.String(), "refused the exporters' health") {
					t.Fatalf("the refusal is not logged:\n%s", h.logs.String())
				}
				return
			}
			h.waitFor("a heartbeat saying node is down", func() bool {
				hs := h.fake.health.Load()
				return hs != nil && len(*hs) == 1 && (*hs)[0].State == protocol.ExporterDown
			})
			hs := *h.fake.health.Load()
			if hs[0].Name != "node" || !strings.HasPrefix(hs[0].Reason, "connect: ") || hs[0].Since.IsZero() || hs[0].LastResult.IsZero() {
				t.Fatalf("health %+v, want node down with reason connect and times", hs)
			}
			if err := protocol.ValidateExporterHealth(hs); err != nil {
				t.Fatalf("the agent sent health the server refuses: %v", err)
			}
		})
	}
}
