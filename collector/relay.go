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

package collector

import "github.com/prometheus/client_golang/prometheus"

// Relay holds the per-exporter metrics of the agent's relay, in the spirit
// of node_exporter's node_scrape_collector_success: a failing exporter is
// visible as a series, not only as a log line.
type Relay struct {
	Up             *prometheus.GaugeVec
	ScrapeDuration *prometheus.HistogramVec
	Samples        *prometheus.CounterVec
	ParseErrors    *prometheus.CounterVec
	UpstreamErrors *prometheus.CounterVec
	Dropped        *prometheus.CounterVec
}

// NewRelay creates the relay metrics and registers them with reg.
func NewRelay(reg prometheus.Registerer) *Relay {
	const ns, sub = "baremetal_sd", "relay"
	m := &Relay{
		Up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "up",
			Help: "1 if the last relay of the exporter succeeded, 0 if it failed.",
		}, []string{"exporter"}),
		ScrapeDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: sub, Name: "scrape_duration_seconds",
			Help:    "Duration of relaying one exporter, upstream request to last byte written.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 8),
		}, []string{"exporter"}),
		Samples: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "samples_total",
			Help: "Samples relayed after relabeling, by exporter.",
		}, []string{"exporter"}),
		ParseErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "parse_errors_total",
			Help: "Upstream bodies that could not be parsed, by exporter.",
		}, []string{"exporter"}),
		UpstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "upstream_errors_total",
			Help: "Failed upstream scrapes by exporter and reason (request, connect, status, redirect, timeout, canceled, content_type, content_encoding, body, body_too_large, line_too_long, frame_too_large, metric_too_large, parse, relabel).",
		}, []string{"exporter", "reason"}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "dropped_families_total",
			Help: "Metric families dropped while merging exporters on the aggregate endpoint (type conflicts, repeated names).",
		}, []string{"exporter"}),
	}
	reg.MustRegister(m.Up, m.ScrapeDuration, m.Samples, m.ParseErrors, m.UpstreamErrors, m.Dropped)
	return m
}
