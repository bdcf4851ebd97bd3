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
	"cmp"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery"
)

// Bounds of the consumer log, which also bound the cardinality of
// baremetal_sd_httpsd_consumer_requests_total: distinct consumers beyond
// maxConsumers are counted as "other", and (consumer, shard) pairs beyond
// maxConsumerRows as ("other", "other").
const (
	maxConsumers    = 32
	maxConsumerRows = 128
	// maxConsumerQuery bounds the query string kept for display.
	maxConsumerQuery = 256
)

// Consumer names that are not credentials.
const (
	ConsumerAnonymous = "anonymous"
	ConsumerOther     = "other"
)

type consumerKey struct{ consumer, shard string }

// ConsumerLog remembers who fetched http_sd, which shard and when, so that an
// operator sees a Prometheus that stopped refreshing (on the status page and
// in a metric). Its size is bounded whatever clients send.
type ConsumerLog struct {
	metrics *collector.Server
	now     func() time.Time

	mu        sync.Mutex
	rows      map[consumerKey]*discovery.ConsumerFetch
	consumers map[string]int // rows per consumer
}

// NewConsumerLog creates an empty consumer log. metrics may be nil.
func NewConsumerLog(metrics *collector.Server, now func() time.Time) *ConsumerLog {
	if now == nil {
		now = time.Now
	}
	return &ConsumerLog{
		metrics:   metrics,
		now:       now,
		rows:      make(map[consumerKey]*discovery.ConsumerFetch),
		consumers: make(map[string]int),
	}
}

// Record notes one http_sd request that authenticated as consumer.
func (l *ConsumerLog) Record(consumer, shard, query string, status int) {
	if len(query) > maxConsumerQuery {
		query = query[:maxConsumerQuery]
	}
	l.mu.Lock()
	k := l.key(consumer, shard)
	row, ok := l.rows[k]
	if !ok {
		row = &discovery.ConsumerFetch{Consumer: k.consumer, Shard: k.shard}
		l.rows[k] = row
		l.consumers[k.consumer]++
	}
	row.Requests++
	row.LastFetch = l.now()
	row.LastStatus = status
	row.Query = query
	l.mu.Unlock()
	if l.metrics != nil {
		l.metrics.HTTPSDConsumerRequests.WithLabelValues(k.consumer, k.shard, strconv.Itoa(status)).Inc()
	}
}

// key maps a request to its row, folding what exceeds the bounds into
// "other". It is called with mu held.
func (l *ConsumerLog) key(consumer, shard string) consumerKey {
	k := consumerKey{consumer, shard}
	if _, ok := l.rows[k]; ok {
		return k
	}
	if _, known := l.consumers[consumer]; !known && len(l.consumers) >= maxConsumers {
		k.consumer = ConsumerOther
		if _, ok := l.rows[k]; ok {
			return k
		}
	}
	if len(l.rows) >= maxConsumerRows {
		return consumerKey{ConsumerOther, ConsumerOther}
	}
	return k
}

// Fetches returns a copy of the log, ordered by consumer and shard.
func (l *ConsumerLog) Fetches() []discovery.ConsumerFetch {
	l.mu.Lock()
	out := make([]discovery.ConsumerFetch, 0, len(l.rows))
	for _, r := range l.rows {
		out = append(out, *r)
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b discovery.ConsumerFetch) int {
		return cmp.Or(cmp.Compare(a.Consumer, b.Consumer), cmp.Compare(a.Shard, b.Shard))
	})
	return out
}
