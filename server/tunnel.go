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

package server

import (
	"net"
	"strings"

	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/tunnel"
)

// tunnelDirectory shows the registry to the tunnel server.
type tunnelDirectory struct{ reg *registry.Registry }

func (d tunnelDirectory) Agent(id string) (tunnel.Agent, bool) {
	v, ok := d.reg.Get(id)
	if !ok {
		return tunnel.Agent{}, false
	}
	return tunnel.Agent{ID: v.ID, Hostname: v.Hostname, Port: v.Port, Listed: v.State.Listed(), Tunnel: v.Tunnel}, true
}

func (d tunnelDirectory) CheckCertificate(id, serial string) error {
	return d.reg.CheckCertificate(id, serial)
}

func (d tunnelDirectory) Generation() uint64 { return d.reg.Generation() }

// reservedNames are the serving names no agent may register, loopback
// names aside.
func reservedNames(names []string) []string {
	var out []string
	for _, n := range names {
		if ip := net.ParseIP(n); (ip != nil && ip.IsLoopback()) || strings.EqualFold(n, "localhost") {
			continue
		}
		out = append(out, n)
	}
	return out
}
