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
	"bytes"
	"compress/flate"
	"context"
	"fmt"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/bench/synthetic"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/internal/heap"
)

// The benchmarks in this file back the http_sd and registry numbers of
// BENCHMARKS.md; rerun them with
//
//	go test -run '^$' -bench 'SDCache|Registry' -benchtime 20x -count 5 ./discovery/registry ./discovery/httpsd

// benchRegistry loads n synthetic agents the way the server loads its store
// at start-up.
func benchRegistry(b *testing.B, n int) *registry.Registry {
	b.Helper()
	r := registry.New(registry.Config{Store: registrytest.BenchStore{N: n, Now: time.Now()}})
	if err := r.Load(context.Background()); err != nil {
		b.Fatal(err)
	}
	return r
}

// benchServe writes a body the way the http_sd handler does.
func benchServe(w io.Writer, body Body, gzip bool) {
	if gzip {
		_ = body.WriteGzip(w)
		return
	}
	_ = body.WriteJSON(w)
}

func benchSize(body Body, gzip bool) int {
	if gzip {
		return body.GzipSize
	}
	return body.Size
}

var benchEncodings = []struct {
	name string
	gzip bool
}{{"identity", false}, {"gzip", true}}

// BenchmarkSDCache_Cached is a Prometheus refresh when nothing changed: the
// goal is < 5 ms with 100,000 agents.
func BenchmarkSDCache_Cached(b *testing.B) {
	r := benchRegistry(b, registrytest.BenchAgents)
	c := NewCache(r, nil)
	for _, enc := range benchEncodings {
		b.Run(enc.name, func(b *testing.B) {
			c.Get(Filter{}) // build the cached body before timing
			for b.Loop() {
				benchServe(io.Discard, c.Get(Filter{}), enc.gzip)
			}
			b.ReportMetric(float64(benchSize(c.Get(Filter{}), enc.gzip))/1e6, "MB/body")
		})
	}
}

// BenchmarkSDCache_RebuildAfterChange is a refresh after one agent changed
// (maintenance toggled): the goal is < 150 ms with 100,000 agents. The change
// itself is not timed.
func BenchmarkSDCache_RebuildAfterChange(b *testing.B) {
	r := benchRegistry(b, registrytest.BenchAgents)
	c := NewCache(r, nil)
	ctx := context.Background()
	for _, enc := range benchEncodings {
		b.Run(enc.name, func(b *testing.B) {
			c.Get(Filter{})
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				id := synthetic.ID((i * 7919) % registrytest.BenchAgents)
				if _, err := r.Update(ctx, id, func(a *store.Agent) error {
					a.Maintenance = !a.Maintenance
					return nil
				}); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				benchServe(io.Discard, c.Get(Filter{}), enc.gzip)
			}
		})
	}
}

// BenchmarkSDCache_Cold builds the whole response from scratch, as the first
// request after a start does.
func BenchmarkSDCache_Cold(b *testing.B) {
	r := benchRegistry(b, registrytest.BenchAgents)
	for _, enc := range benchEncodings {
		b.Run(enc.name, func(b *testing.B) {
			for b.Loop() {
				c := NewCache(r, nil)
				benchServe(io.Discard, c.Get(Filter{}), enc.gzip)
			}
		})
	}
}

// benchScrapeShards is the number of Prometheus servers of the sharding
// benchmarks.
const benchScrapeShards = 4

// benchShardFilters are the unsharded filter and those of every scrape
// shard, measured side by side.
func benchShardFilters() []struct {
	name string
	f    Filter
} {
	out := []struct {
		name string
		f    Filter
	}{{"unsharded", Filter{}}}
	for i := range benchScrapeShards {
		out = append(out, struct {
			name string
			f    Filter
		}{fmt.Sprintf("shard=%d_of_%d", i, benchScrapeShards), Filter{Shard: ScrapeShard{i, benchScrapeShards}}})
	}
	return out
}

// benchToggle changes one agent (maintenance), as an operator would; the
// i-th call changes a different agent of the 100,000.
func benchToggle(b *testing.B, r *registry.Registry, i int) {
	b.Helper()
	id := synthetic.ID((i * 7919) % registrytest.BenchAgents)
	if _, err := r.Update(context.Background(), id, func(a *store.Agent) error {
		a.Maintenance = !a.Maintenance
		return nil
	}); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkSDCache_Shards compares, with 100,000 agents, each of 4 scrape
// shards' identity response (what Prometheus asks for) with the unsharded
// one: from cache, after one agent changed, and cold. "all_shards" serves
// the 4 shards one after the other, as 4 Prometheus servers refreshing
// after the same change do; the first of them rebuilds the changed registry
// shard for all four.
func BenchmarkSDCache_Shards(b *testing.B) {
	r := benchRegistry(b, registrytest.BenchAgents)
	c := NewCache(r, nil)
	filters := benchShardFilters()
	b.Run("cached", func(b *testing.B) {
		for _, tc := range filters {
			b.Run(tc.name, func(b *testing.B) {
				c.Get(tc.f)
				for b.Loop() {
					benchServe(io.Discard, c.Get(tc.f), false)
				}
				body := c.Get(tc.f)
				b.ReportMetric(float64(body.Size)/1e6, "MB/body")
				b.ReportMetric(float64(body.GzipSize)/1e6, "gzMB/body")
				// The view holds every shard of its shard count.
				b.ReportMetric(float64(c.views[tc.f.key()].bytes)/(1<<20), "MiB/view")
			})
		}
	})
	b.Run("after_change", func(b *testing.B) {
		for _, tc := range filters {
			b.Run(tc.name, func(b *testing.B) {
				c.Get(tc.f)
				for i := 0; b.Loop(); i++ {
					b.StopTimer()
					benchToggle(b, r, i)
					b.StartTimer()
					benchServe(io.Discard, c.Get(tc.f), false)
				}
			})
		}
		b.Run("all_shards", func(b *testing.B) {
			for _, tc := range filters[1:] {
				c.Get(tc.f)
			}
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				benchToggle(b, r, i)
				b.StartTimer()
				for _, tc := range filters[1:] {
					benchServe(io.Discard, c.Get(tc.f), false)
				}
			}
		})
	})
	b.Run("cold", func(b *testing.B) {
		b.Run("unsharded", func(b *testing.B) {
			for b.Loop() {
				benchServe(io.Discard, NewCache(r, nil).Get(Filter{}), false)
			}
		})
		b.Run("all_shards", func(b *testing.B) {
			for b.Loop() {
				cold := NewCache(r, nil)
				for _, tc := range filters[1:] {
					benchServe(io.Discard, cold.Get(tc.f), false)
				}
			}
		})
	})
}

// BenchmarkSegmentDeflateLevels backs the choice of gzsplice.Level: it
// deflates the http_sd JSON of 100,000 agents in as many pieces as the
// cache has shards, each ending in a sync flush as a segment does, at the
// levels worth considering, and reports the compressed size.
func BenchmarkSegmentDeflateLevels(b *testing.B) {
	var raw bytes.Buffer
	benchServe(&raw, NewCache(benchRegistry(b, registrytest.BenchAgents), nil).Get(Filter{}), false)
	body := raw.Bytes()
	const pieces = 256
	for _, level := range []int{flate.BestSpeed, 2, 3, 5, flate.DefaultCompression} {
		b.Run(fmt.Sprintf("level=%d", level), func(b *testing.B) {
			var out bytes.Buffer
			w, err := flate.NewWriter(&out, level)
			if err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				out.Reset()
				for i := range pieces {
					w.Reset(&out)
					_, _ = w.Write(body[i*len(body)/pieces : (i+1)*len(body)/pieces])
					_ = w.Flush()
				}
			}
			b.ReportMetric(float64(out.Len())/1e6, "MB/body")
		})
	}
}

// BenchmarkRegistry_Load100k loads 100,000 agents as the server does at
// start-up and reports the heap they keep (registry) and what the http_sd
// cache adds once both encodings were served. Run it with -benchtime 1x or a
// few x: every iteration builds a whole registry.
func BenchmarkRegistry_Load100k(b *testing.B) {
	var regBytes, cacheBytes int64
	for b.Loop() {
		b.StopTimer()
		base := heap.InUse()
		b.StartTimer()
		r := benchRegistry(b, registrytest.BenchAgents)
		b.StopTimer()
		afterLoad := heap.InUse()
		c := NewCache(r, nil)
		c.Get(Filter{})
		c.Get(Filter{})
		afterCache := heap.InUse()
		runtime.KeepAlive(r)
		runtime.KeepAlive(c)
		regBytes, cacheBytes = afterLoad-base, afterCache-afterLoad
		b.StartTimer()
	}
	b.ReportMetric(float64(regBytes)/registrytest.BenchAgents, "registry-B/agent")
	b.ReportMetric(float64(regBytes)/(1<<20), "registry-MiB")
	b.ReportMetric(float64(cacheBytes)/(1<<20), "sdcache-MiB")
}
