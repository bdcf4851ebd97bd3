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
	"context"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/bench/synthetic"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
)

// The benchmarks in this file back the http_sd and registry numbers of
// BENCHMARKS.md; rerun them with
//
//	go test -run '^$' -bench 'SDCache|Registry' -benchtime 20x -count 5 ./discovery/registry ./discovery/httpsd

// benchRegistry loads n synthetic agents the way the server loads its store
// at start-up.
func benchRegistry(b *testing.B, n int) *Registry {
	b.Helper()
	r := New(Config{Store: registrytest.BenchStore{N: n, Now: time.Now()}})
	if err := r.Load(context.Background()); err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkRegistry_Heartbeat is the registry's share of a heartbeat, from
// all CPUs at once, spread over 100,000 agents.
func BenchmarkRegistry_Heartbeat(b *testing.B) {
	r := benchRegistry(b, registrytest.BenchAgents)
	now := time.Now()
	ids := make([]string, registrytest.BenchAgents)
	serials := make([]string, registrytest.BenchAgents)
	for i := range ids {
		a := synthetic.Agent(i, now)
		ids[i], serials[i] = a.ID, a.CertSerial
	}
	var seed atomic.Uint64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := rand.New(rand.NewPCG(seed.Add(1), 0)).IntN(registrytest.BenchAgents)
		for pb.Next() {
			if err := r.Heartbeat(ids[i], serials[i], "ok", nil); err != nil {
				b.Error(err)
				return
			}
			if i++; i == registrytest.BenchAgents {
				i = 0
			}
		}
	})
}

// BenchmarkRegistry_StatusPage100k compares what a status page costs with
// 100,000 agents: Summarize (counts and the first 500) against List (a
// copy and sort of everything).
func BenchmarkRegistry_StatusPage100k(b *testing.B) {
	r := benchRegistry(b, registrytest.BenchAgents)
	b.Run("summarize", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if s := r.Summarize("", 500); len(s.Agents) != 500 {
				b.Fatal(len(s.Agents))
			}
		}
	})
	b.Run("list", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if l := r.List(); len(l) != registrytest.BenchAgents {
				b.Fatal(len(l))
			}
		}
	})
}
