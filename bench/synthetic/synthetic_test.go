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

package synthetic

import (
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// TestAgent_IsARegistrationTheServerAccepts: every synthetic agent passes
// the checks of a real registration and has a server-length id, and no two
// agents share an id, an address or a certificate serial, so that a fleet
// of them loads as that many distinct agents.
func TestAgent_IsARegistrationTheServerAccepts(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	ids, addrs, serials := map[string]int{}, map[string]int{}, map[string]int{}
	for _, n := range []int{0, 1, 254, 255, 256, 65535, 65536, 99_999, 1<<24 - 2} {
		a := Agent(n, now)
		if len(a.ID) != 26 || a.ID != ID(n) {
			t.Errorf("agent %d: id %q, want ID(%d) of 26 characters", n, a.ID, n)
		}
		if err := protocol.ValidateAgentID(a.ID); err != nil {
			t.Errorf("agent %d: %v", n, err)
		}
		req := &protocol.RegisterRequest{Hostname: a.Hostname, Address: a.Address, Port: a.Port, Labels: a.Labels.Map(), Exporters: a.Exporters}
		if err := protocol.ValidateRegistration(req); err != nil {
			t.Errorf("agent %d: %v", n, err)
		}
		for _, seen := range []struct {
			what  string
			m     map[string]int
			value string
		}{{"id", ids, a.ID}, {"address", addrs, a.Address}, {"certificate serial", serials, a.CertSerial}} {
			if other, ok := seen.m[seen.value]; ok {
				t.Errorf("agents %d and %d share the %s %s", other, n, seen.what, seen.value)
			}
			seen.m[seen.value] = n
		}
		if !a.CertNotAfter.After(now) || !a.LastSeen.Equal(now) {
			t.Errorf("agent %d: certificate until %v, last seen %v; want valid and seen at %v", n, a.CertNotAfter, a.LastSeen, now)
		}
	}
}
