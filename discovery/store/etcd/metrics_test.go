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

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestCollector_Counters(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	stats := Stats{WriteRequests: 7, KeysWritten: 300, LastSeenKeysWritten: 256, BytesWritten: 900000, Events: 12, Resyncs: 1, UpdateConflicts: 2}
	reg.MustRegister(newCollector(func() Stats { return stats }))
	want := `
# HELP baremetal_sd_store_etcd_keys_written_total Keys put or deleted by acknowledged etcd writes.
# TYPE baremetal_sd_store_etcd_keys_written_total counter
baremetal_sd_store_etcd_keys_written_total 300
# HELP baremetal_sd_store_etcd_lastseen_keys_written_total Last-seen blobs written by heartbeat flushes (part of keys_written_total).
# TYPE baremetal_sd_store_etcd_lastseen_keys_written_total counter
baremetal_sd_store_etcd_lastseen_keys_written_total 256
# HELP baremetal_sd_store_etcd_resyncs_total Full reads of the registry because the etcd watch fell behind compaction.
# TYPE baremetal_sd_store_etcd_resyncs_total counter
baremetal_sd_store_etcd_resyncs_total 1
# HELP baremetal_sd_store_etcd_update_conflicts_total Record updates retried because another replica changed the record first.
# TYPE baremetal_sd_store_etcd_update_conflicts_total counter
baremetal_sd_store_etcd_update_conflicts_total 2
# HELP baremetal_sd_store_etcd_watch_events_total Changes made by other replicas, delivered by the etcd watch.
# TYPE baremetal_sd_store_etcd_watch_events_total counter
baremetal_sd_store_etcd_watch_events_total 12
# HELP baremetal_sd_store_etcd_write_requests_total Write requests sent to etcd (puts, deletes, transactions, lease grants), retries included: each is one Raft proposal.
# TYPE baremetal_sd_store_etcd_write_requests_total counter
baremetal_sd_store_etcd_write_requests_total 7
# HELP baremetal_sd_store_etcd_written_bytes_total Bytes of keys and values in acknowledged etcd writes.
# TYPE baremetal_sd_store_etcd_written_bytes_total counter
baremetal_sd_store_etcd_written_bytes_total 900000
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
	// The counters are read at each scrape.
	stats.Resyncs = 2
	after := `
# HELP baremetal_sd_store_etcd_resyncs_total Full reads of the registry because the etcd watch fell behind compaction.
# TYPE baremetal_sd_store_etcd_resyncs_total counter
baremetal_sd_store_etcd_resyncs_total 2
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(after), "baremetal_sd_store_etcd_resyncs_total"); err != nil {
		t.Fatal(err)
	}
}
