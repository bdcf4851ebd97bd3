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

package httpsd

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/baremetal-sd/baremetal_sd/collector"
)

// TestConsumerLog_Bounded: a client that sends many identities or shard
// combinations cannot grow the log or the metric's series without bound.
func TestConsumerLog_Bounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics := collector.NewServer(reg)
	now := time.Unix(1700000000, 0)
	l := NewConsumerLog(metrics, func() time.Time { return now })
	for i := range 10 * maxConsumers {
		for s := range 8 {
			l.Record(fmt.Sprintf("token:%d", i), fmt.Sprintf("%d/8", s), strings.Repeat("q", 2*maxConsumerQuery), http.StatusOK)
		}
	}
	fetches := l.Fetches()
	if len(fetches) > maxConsumerRows+1 {
		t.Errorf("%d rows, want at most %d", len(fetches), maxConsumerRows+1)
	}
	consumers := map[string]bool{}
	var total uint64
	for _, f := range fetches {
		consumers[f.Consumer] = true
		total += f.Requests
		if len(f.Query) > maxConsumerQuery {
			t.Errorf("query of %d bytes kept", len(f.Query))
		}
		if !f.LastFetch.Equal(now) {
			t.Errorf("last fetch %v, want %v", f.LastFetch, now)
		}
	}
	if len(consumers) > maxConsumers+1 || !consumers[ConsumerOther] {
		t.Errorf("%d consumers (other: %v), want at most %d plus other", len(consumers), consumers[ConsumerOther], maxConsumers)
	}
	if total != 10*maxConsumers*8 {
		t.Errorf("%d requests counted, want %d: none may be lost", total, 10*maxConsumers*8)
	}
	if n := testutil.CollectAndCount(metrics.HTTPSDConsumerRequests); n > maxConsumerRows+1 {
		t.Errorf("%d consumer series, want at most %d", n, maxConsumerRows+1)
	}
	// Known consumers keep their own rows once the log is full.
	l.Record("token:0", "0/8", "", http.StatusNotModified)
	for _, f := range l.Fetches() {
		if f.Consumer == "token:0" && f.Shard == "0/8" && (f.Requests != 2 || f.LastStatus != http.StatusNotModified) {
			t.Errorf("token:0 row %+v, want 2 requests, last 304", f)
		}
	}
}
