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

// Package synthetic makes the agent records of the load tests: the n-th of a
// fleet, shaped like a real registration, the same every time. `bench
// populate` writes them into a server's store, and the registry and http_sd
// benchmarks load them, so that both measure the same fleet.
package synthetic

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strconv"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// IDPrefix starts every synthetic agent's id; the rest is the agent's
// number, zero-padded to the 26 characters of a server-issued id.
const IDPrefix = "bench"

// ID is the n-th synthetic agent's id.
func ID(n int) string { return fmt.Sprintf(IDPrefix+"%021d", n) }

// Address is the n-th simulated host's address; the fleet spreads over
// 10.0.0.0/8.
func Address(n int) string {
	n++
	return fmt.Sprintf("10.%d.%d.%d", (n>>16)&0xff, (n>>8)&0xff, n&0xff)
}

// Agent returns the n-th synthetic agent record: the shape of a real
// registration (26-character id like the server's, hostname, address, two
// labels, one exporter, certificate serial and key fingerprint), so that
// http_sd and memory numbers match what real agents would produce.
func Agent(n int, now time.Time) *store.Agent {
	sum := sha256.Sum256([]byte("bench-agent-" + strconv.Itoa(n)))
	return &store.Agent{
		ID:             ID(n),
		Hostname:       "bench-" + strconv.Itoa(n) + ".example.com",
		Address:        Address(n),
		Port:           9956,
		Labels:         labels.FromStrings("rack", "r"+strconv.Itoa(n%64), "role", [...]string{"web", "db", "cache", "batch"}[n%4]),
		Exporters:      []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
		CertSerial:     hex.EncodeToString(sum[:16]),
		CertNotAfter:   now.Add(24 * time.Hour),
		KeyFingerprint: hex.EncodeToString(sum[:]),
		RegisteredAt:   now,
		LastSeen:       now,
	}
}
