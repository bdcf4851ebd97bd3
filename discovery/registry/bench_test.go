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
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// The benchmarks in this file back the http_sd and registry numbers of
// BENCHMARKS.md; rerun them with
//
//	go test -run '^$' -bench 'SDCache|Registry' -benchtime 20x -count 5 ./discovery/registry ./discovery/httpsd

// benchAgents is the fleet size of the scale goals.
const benchAgents = 100_000

// benchStore is a Store that only lists synthetic agents, generated on each
// call, so that the registry's memory is measured without a store's copy.
type benchStore struct {
	n   int
	now time.Time
}

func (s benchStore) List(context.Context) ([]store.Agent, error) {
	out := make([]store.Agent, s.n)
	for i := range out {
		out[i] = *benchAgent(i, s.now)
	}
	return out, nil
}
func (benchStore) Put(context.Context, *store.Agent) error    { return nil }
func (benchStore) Delete(context.Context, string) error       { return nil }
func (benchStore) Touch(context.Context, []store.Touch) error { return nil }

// Update hands fn the synthetic agent with that id as the stored record.
func (s benchStore) Update(_ context.Context, id string, _ *store.TokenClaim, fn store.UpdateFunc) (*store.Agent, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(id, "bench"))
	if err != nil || n < 0 || n >= s.n {
		return nil, store.ErrNotFound
	}
	return fn(benchAgent(n, s.now))
}
func (benchStore) LiveSince() time.Time                     { return time.Time{} }
func (benchStore) Watch(context.Context) <-chan store.Event { return nil }
func (benchStore) Close() error                             { return nil }

// benchAgent is the n-th synthetic agent, shaped like a real registration
// (and like `bench populate` writes): 26-character id, two labels, one
// exporter, certificate serial and key fingerprint.
func benchAgent(n int, now time.Time) *store.Agent {
	sum := sha256.Sum256([]byte("bench-agent-" + strconv.Itoa(n)))
	m := n + 1
	return &store.Agent{
		ID:             fmt.Sprintf("bench%021d", n),
		Hostname:       "bench-" + strconv.Itoa(n) + ".example.com",
		Address:        fmt.Sprintf("10.%d.%d.%d", (m>>16)&0xff, (m>>8)&0xff, m&0xff),
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

// benchRegistry loads n synthetic agents the way the server loads its store
// at start-up.
func benchRegistry(b *testing.B, n int) *Registry {
	b.Helper()
	r := New(Config{Store: benchStore{n: n, now: time.Now()}})
	if err := r.Load(context.Background()); err != nil {
		b.Fatal(err)
	}
	return r
}

// BenchmarkRegistry_Heartbeat is the registry's share of a heartbeat, from
// all CPUs at once, spread over 100,000 agents.
func BenchmarkRegistry_Heartbeat(b *testing.B) {
	r := benchRegistry(b, benchAgents)
	now := time.Now()
	ids := make([]string, benchAgents)
	serials := make([]string, benchAgents)
	for i := range ids {
		a := benchAgent(i, now)
		ids[i], serials[i] = a.ID, a.CertSerial
	}
	var seed atomic.Uint64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := rand.New(rand.NewPCG(seed.Add(1), 0)).IntN(benchAgents)
		for pb.Next() {
			if err := r.Heartbeat(ids[i], serials[i], "ok", nil); err != nil {
				b.Error(err)
				return
			}
			if i++; i == benchAgents {
				i = 0
			}
		}
	})
}

// BenchmarkRegistry_StatusPage100k compares what a status page costs with
// 100,000 agents: Summarize (counts and the first 500) against List (a
// copy and sort of everything).
func BenchmarkRegistry_StatusPage100k(b *testing.B) {
	r := benchRegistry(b, benchAgents)
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
			if l := r.List(); len(l) != benchAgents {
				b.Fatal(len(l))
			}
		}
	})
}
