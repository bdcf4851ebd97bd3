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

package etcd

import "github.com/prometheus/client_golang/prometheus"

// collector exposes a store's Stats as the baremetal_sd_store_etcd_*
// counters. It reads them at every scrape, so the store keeps plain atomic
// counters and knows nothing of Prometheus' registry.
type collector struct {
	stats func() Stats
	descs [7]*prometheus.Desc
}

// NewCollector returns the collector of the baremetal_sd_store_etcd_*
// counters of s, for the server's metrics registry.
func NewCollector(s *Store) prometheus.Collector { return newCollector(s.Stats) }

func newCollector(stats func() Stats) *collector {
	desc := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("baremetal_sd", "store_etcd", name), help, nil, nil)
	}
	return &collector{stats: stats, descs: [...]*prometheus.Desc{
		desc("write_requests_total", "Write requests sent to etcd (puts, deletes, transactions, lease grants), retries included: each is one Raft proposal."),
		desc("keys_written_total", "Keys put or deleted by acknowledged etcd writes."),
		desc("lastseen_keys_written_total", "Last-seen blobs written by heartbeat flushes (part of keys_written_total)."),
		desc("written_bytes_total", "Bytes of keys and values in acknowledged etcd writes."),
		desc("watch_events_total", "Changes made by other replicas, delivered by the etcd watch."),
		desc("resyncs_total", "Full reads of the registry because the etcd watch fell behind compaction."),
		desc("update_conflicts_total", "Record updates retried because another replica changed the record first."),
	}}
}

// Describe implements prometheus.Collector.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.descs {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	for i, v := range [...]uint64{s.WriteRequests, s.KeysWritten, s.LastSeenKeysWritten, s.BytesWritten, s.Events, s.Resyncs, s.UpdateConflicts} {
		ch <- prometheus.MustNewConstMetric(c.descs[i], prometheus.CounterValue, float64(v))
	}
}
