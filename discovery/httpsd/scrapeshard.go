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
	"errors"
	"fmt"
	"strconv"
)

// ScrapeShard selects the part of the targets that one of several
// Prometheus servers scrapes (?shard=I&shards=N). It is unrelated to the
// registry's internal shards (registry.ShardCount), which only split the cache.
//
// A zero ScrapeShard (Count 0) selects everything.
type ScrapeShard struct {
	Index int
	Count int
}

// MaxScrapeShards bounds ?shards=N. Each cached view holds a fragment per
// registry shard and scrape shard, so N is kept to what a fleet of
// Prometheus servers needs.
const MaxScrapeShards = 64

// maxShardParamLen bounds a shard parameter before it is parsed: two digits
// suffice, a few more give a clear range error instead of a syntax error.
const maxShardParamLen = 8

// Sharded reports whether s selects a part of the targets.
func (s ScrapeShard) Sharded() bool { return s.Count > 1 }

// String is the shard as the metrics and the status page show it: "I/N",
// or "all" when unsharded.
func (s ScrapeShard) String() string {
	if !s.Sharded() {
		return "all"
	}
	return strconv.Itoa(s.Index) + "/" + strconv.Itoa(s.Count)
}

// parseScrapeShard reads the values of ?shard= and ?shards=; both or
// neither must be given, once each.
func parseScrapeShard(shard, shards []string) (ScrapeShard, error) {
	if len(shard) == 0 && len(shards) == 0 {
		return ScrapeShard{}, nil
	}
	if len(shard) != 1 || len(shards) != 1 {
		return ScrapeShard{}, errors.New("shard and shards must be given together, once each")
	}
	n, err := parseShardParam("shards", shards[0])
	if err != nil {
		return ScrapeShard{}, err
	}
	if n < 1 || n > MaxScrapeShards {
		return ScrapeShard{}, fmt.Errorf("shards=%d out of range: want 1 to %d", n, MaxScrapeShards)
	}
	i, err := parseShardParam("shard", shard[0])
	if err != nil {
		return ScrapeShard{}, err
	}
	if i >= n {
		return ScrapeShard{}, fmt.Errorf("shard=%d out of range: shards are numbered 0 to %d", i, n-1)
	}
	if n == 1 {
		// One shard is everything: share the unsharded view.
		return ScrapeShard{}, nil
	}
	return ScrapeShard{Index: i, Count: n}, nil
}

// parseShardParam accepts a decimal number without sign or spaces.
func parseShardParam(name, v string) (int, error) {
	if v == "" || len(v) > maxShardParamLen {
		return 0, fmt.Errorf("%s=%q is not a shard number", name, truncateParam(v))
	}
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not a shard number", name, v)
	}
	return int(n), nil
}

func truncateParam(v string) string {
	if len(v) > 2*maxShardParamLen {
		return v[:2*maxShardParamLen] + "..."
	}
	return v
}

// ScrapeShardOf returns the scrape shard, in [0, count), of an agent. It is
// rendezvous (highest random weight) hashing: every shard scores the agent
// id and the highest score wins, so going from N to N+1 shards moves only
// the agents the new shard wins, about 1/(N+1) of them, and none between old
// shards. The agent's exporters stay together on one Prometheus.
//
// The function is part of the contract with operators: changing it would
// move targets between Prometheus servers on upgrade.
func ScrapeShardOf(agentID string, count int) int {
	if count <= 1 {
		return 0
	}
	key := fnv64a(agentID)
	best, bestScore := 0, uint64(0)
	for i := range count {
		if s := mix64(key ^ (uint64(i)+1)*0x9e3779b97f4a7c15); i == 0 || s > bestScore {
			best, bestScore = i, s
		}
	}
	return best
}

// fnv64a is FNV-1a (as hash/fnv's New64a computes it) of a string, without
// the interface call and the conversion to a byte slice: the cache hashes
// every agent of a changed registry shard.
func fnv64a(s string) uint64 {
	const (
		offset64 = 14695981039346656037
		prime64  = 1099511628211
	)
	h := uint64(offset64)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= prime64
	}
	return h
}

// mix64 is the SplitMix64 finalizer: it spreads FNV's weak low-order
// avalanche so that the per-shard scores are independent.
func mix64(z uint64) uint64 {
	z = (z ^ z>>30) * 0xbf58476d1ce4e5b9
	z = (z ^ z>>27) * 0x94d049bb133111eb
	return z ^ z>>31
}
