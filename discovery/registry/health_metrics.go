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
	"cmp"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/baremetal-sd/baremetal_sd/discovery"
)

// MaxExporterSeries bounds the exporter names of baremetal_sd_exporters:
// the names most agents have get a series each, the others are summed up
// under OtherExporters. Names are validated, but every agent may choose
// its own.
const MaxExporterSeries = 50

// OtherExporters is the exporter label of the exporters past
// MaxExporterSeries.
const OtherExporters = "other"

const exporterHealthHelp = "Exporters of healthy and stale agents by the state of their last relay as the agents' heartbeats report it " +
	"(up, down, unknown). Exporters of stale agents, and of agents that report no health, count as unknown; " +
	"agents in maintenance and out of http_sd do not count. Past the most common exporter names, the rest count as exporter=\"" + OtherExporters + "\"."

// exporterHealthCollector counts the exporters of the agents in service by
// the state their heartbeats last reported.
type exporterHealthCollector struct {
	r    *Registry
	desc *prometheus.Desc
}

// NewExporterHealthCollector returns the collector of
// baremetal_sd_exporters{exporter,state}. It reads the registry's memory on
// every scrape, one pass over the agents as the status page makes.
func NewExporterHealthCollector(r *Registry) prometheus.Collector {
	return &exporterHealthCollector{r: r, desc: prometheus.NewDesc(
		"baremetal_sd_exporters",
		exporterHealthHelp,
		[]string{"exporter", "state"}, nil)}
}

func (c *exporterHealthCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *exporterHealthCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.r.exporterStates()
	type named struct {
		name  string
		total int
		n     [3]int
	}
	all := make([]named, 0, len(counts))
	for name, n := range counts {
		all = append(all, named{name, n[0] + n[1] + n[2], n})
	}
	// The most common names keep their own series, ties by name, so the
	// choice is stable from one scrape to the next.
	slices.SortFunc(all, func(a, b named) int { return cmp.Or(cmp.Compare(b.total, a.total), cmp.Compare(a.name, b.name)) })
	if len(all) > MaxExporterSeries {
		var other [3]int
		for _, x := range all[MaxExporterSeries:] {
			for i := range other {
				other[i] += x.n[i]
			}
		}
		all = all[:MaxExporterSeries]
		// A real exporter named "other" shares the series.
		if i := slices.IndexFunc(all, func(x named) bool { return x.name == OtherExporters }); i >= 0 {
			for j := range other {
				all[i].n[j] += other[j]
			}
		} else {
			all = append(all, named{name: OtherExporters, n: other})
		}
	}
	for _, x := range all {
		for code, v := range x.n {
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(v), x.name, stateName(uint8(code)))
		}
	}
}

// exporterStates counts, per exporter name, the exporters of agents in
// service by state, indexed by health code.
func (r *Registry) exporterStates() map[string][3]int {
	now := r.cfg.Now()
	counts := make(map[string][3]int)
	r.mu.RLock()
	defer r.mu.RUnlock()
	for i := range r.shards {
		for _, e := range r.shards[i].agents {
			st := r.state(e, now)
			if st != discovery.StateHealthy && st != discovery.StateStale {
				continue
			}
			h := e.health.Load()
			for _, exp := range e.rec.Exporters {
				code := healthUnknown
				if x := h.find(exp.Name); x != nil && st == discovery.StateHealthy {
					code = x.state
				}
				n := counts[exp.Name]
				n[code]++
				counts[exp.Name] = n
			}
		}
	}
	return counts
}
