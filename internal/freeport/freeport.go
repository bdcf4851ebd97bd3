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

// Package freeport hands out TCP ports on 127.0.0.1 for test daemons that
// must be told their port before they bind it.
//
// A port from listening on :0 comes from the kernel's ephemeral range, the
// same range outgoing connections take their local ports from; between the
// test closing its probe listener and the daemon binding, any connection a
// test makes meanwhile may take it ("address already in use"). So ports are
// picked below the ephemeral range, and never twice in one test process.
package freeport

import (
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// lowest is the lowest port handed out: clear of the well-known ports that
// local services tend to use.
const lowest = 10000

// handedOut remembers the ports given to this process's tests. It is the
// one piece of shared state here, and it only grows.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: make(map[int]bool)}

// Port returns a port on 127.0.0.1 that was free a moment ago.
func Port(t testing.TB) int {
	t.Helper()
	return Ports(t, 1)[0]
}

// Ports returns n distinct ports on 127.0.0.1 that were free a moment ago.
func Ports(t testing.TB, n int) []int {
	t.Helper()
	top := ephemeralStart()
	handedOut.Lock()
	defer handedOut.Unlock()
	ports := make([]int, 0, n)
	for attempt := 0; len(ports) < n; attempt++ {
		if attempt > 1000 {
			t.Fatalf("no free port below %d after 1000 attempts", top)
		}
		p := lowest + rand.IntN(top-lowest)
		if handedOut.ports[p] {
			continue
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			continue // taken
		}
		if err := l.Close(); err != nil {
			t.Fatalf("close probe listener: %v", err)
		}
		handedOut.ports[p] = true
		ports = append(ports, p)
	}
	return ports
}

// ephemeralStart is where the kernel's ephemeral port range begins (32768
// unless configured otherwise).
func ephemeralStart() int {
	const fallback = 32768
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return fallback
	}
	fields := strings.Fields(string(data))
	if len(fields) == 0 {
		return fallback
	}
	start, err := strconv.Atoi(fields[0])
	if err != nil || start <= lowest+1000 {
		return fallback
	}
	return start
}
