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
	"runtime"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/baremetal-sd/baremetal_sd/bench/synthetic"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/internal/heap"
)

// BenchmarkRegistry_ExporterHealth100k reports the heap that exporter
// health adds to 100,000 agents that each report their one exporter up
// (the common case) or down with a reason, and what a heartbeat with
// health and a scrape of baremetal_sd_exporters cost. Run with
// -benchtime 1x for the memory figures.
func BenchmarkRegistry_ExporterHealth100k(b *testing.B) {
	now := time.Now()
	up := []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterUp, Since: now, LastResult: now}}
	down := []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterDown, Reason: "connect: upstream unreachable: connection refused", Since: now, LastResult: now}}
	ids := make([]string, registrytest.BenchAgents)
	for i := range ids {
		ids[i] = synthetic.ID(i)
	}
	for _, tc := range []struct {
		name   string
		report []protocol.ExporterHealth
	}{{"up", up}, {"down", down}} {
		b.Run("memory/"+tc.name, func(b *testing.B) {
			var perAgent float64
			for b.Loop() {
				b.StopTimer()
				r := benchRegistry(b, registrytest.BenchAgents)
				base := heap.InUse()
				b.StartTimer()
				for _, id := range ids {
					r.ReportHealth(id, tc.report)
				}
				b.StopTimer()
				perAgent = float64(heap.InUse()-base) / registrytest.BenchAgents
				runtime.KeepAlive(r)
				b.StartTimer()
			}
			b.ReportMetric(perAgent, "health-B/agent")
		})
	}
	r := benchRegistry(b, registrytest.BenchAgents)
	for _, id := range ids {
		r.ReportHealth(id, up)
	}
	b.Run("report", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			r.ReportHealth(ids[i], up)
			if i++; i == registrytest.BenchAgents {
				i = 0
			}
		}
	})
	b.Run("collect", func(b *testing.B) {
		c := NewExporterHealthCollector(r)
		b.ReportAllocs()
		for b.Loop() {
			ch := make(chan prometheus.Metric, 16)
			go func() { c.Collect(ch); close(ch) }()
			for range ch {
			}
		}
	})
}
