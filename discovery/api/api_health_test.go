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

package api

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// TestAPI_HeartbeatExporterHealth: a heartbeat's exporter health is shown
// in the agent list; a body out of bounds is refused with a 400 that says
// why and changes nothing; a heartbeat without health (an agent of 0.1.0)
// keeps working.
func TestAPI_HeartbeatExporterHealth(t *testing.T) {
	h := newAPIHarness(t)
	resp, cert := h.enroll(ca.TokenSpec{}, nil)
	agent := h.client(&cert)
	state := func() string {
		v, _ := h.reg.Get(resp.AgentID)
		return fmt.Sprint(v.ExporterHealth)
	}
	many := make([]string, protocol.MaxExporters+1)
	for i := range many {
		many[i] = fmt.Sprintf(`{"name":"e%d","state":"up"}`, i)
	}
	tests := []struct {
		name   string
		body   string
		status int
		want   string // in the error, or in the stored health
	}{
		{"no health", `{}`, http.StatusOK, "unknown"},
		{"down", `{"exporters":[{"name":"node","state":"down","reason":"connect: connection refused","since":"2026-12-06T12:00:00Z"}]}`, http.StatusOK, "connect: connection refused"},
		{"no body keeps it", ``, http.StatusOK, "connect: connection refused"},
		{"unknown state", `{"exporters":[{"name":"node","state":"dead"}]}`, http.StatusBadRequest, "is not one of up, down, unknown"},
		{"terminal escape in reason", `{"exporters":[{"name":"node","state":"down","reason":"\u001b[2J"}]}`, http.StatusBadRequest, "control character"},
		{"reason too long", `{"exporters":[{"name":"node","state":"down","reason":"` + strings.Repeat("x", protocol.MaxExporterReasonLen+1) + `"}]}`, http.StatusBadRequest, "longer than 256 bytes"},
		{"too many", `{"exporters":[` + strings.Join(many, ",") + `]}`, http.StatusBadRequest, "too many exporters"},
		{"bad name", `{"exporters":[{"name":"../x","state":"up"}]}`, http.StatusBadRequest, "invalid"},
		{"unknown field", `{"exporters":[{"name":"node","state":"up","extra":1}]}`, http.StatusBadRequest, "unknown field"},
		{"recovered", `{"exporters":[{"name":"node","state":"up"}]}`, http.StatusOK, "{node up "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := state()
			var body []byte
			if tt.body != "" {
				body = []byte(tt.body)
			}
			rep := h.do(agent, "POST", protocol.PathHeartbeat, "", body)
			if rep.status != tt.status {
				t.Fatalf("status %d (%s), want %d", rep.status, rep.body, tt.status)
			}
			if tt.status != http.StatusOK {
				if !strings.Contains(string(rep.body), tt.want) {
					t.Fatalf("error %s, want it to contain %q", rep.body, tt.want)
				}
				if after := state(); after != before {
					t.Fatalf("a refused heartbeat changed the health from %s to %s", before, after)
				}
				return
			}
			if got := state(); !strings.Contains(got, tt.want) {
				t.Fatalf("health %s, want it to contain %q", got, tt.want)
			}
		})
	}
}
