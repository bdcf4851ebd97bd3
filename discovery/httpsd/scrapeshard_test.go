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
	"context"
	"fmt"
	"hash/fnv"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd/httpsdtest"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
	"github.com/baremetal-sd/baremetal_sd/internal/errtest"
)

// TestScrapeShardOf_Stable pins the assignment: operators rely on a target
// staying with its Prometheus across server upgrades, so a change of the
// hash must be a deliberate, announced one.
func TestScrapeShardOf_Stable(t *testing.T) {
	for _, tc := range []struct {
		id   string
		want []int // for 2, 3, 4 and 5 shards
	}{
		{"a", []int{0, 2, 3, 3}},
		{"agent-1", []int{0, 0, 0, 4}},
		{"01HZX3K9Q7V5W2M8N4P6R0T1Y3", []int{0, 2, 2, 2}},
	} {
		t.Run(tc.id, func(t *testing.T) {
			for i, want := range tc.want {
				if got := ScrapeShardOf(tc.id, i+2); got != want {
					t.Errorf("%d shards: shard %d, want %d", i+2, got, want)
				}
			}
			if got := ScrapeShardOf(tc.id, 1); got != 0 {
				t.Errorf("1 shard: shard %d, want 0", got)
			}
		})
	}
}

// TestScrapeShardOf_GrowingMovesFewAgents measures, over many agent ids, how
// many agents change shards when a Prometheus server is added: about
// 1/(N+1), all of them to the new shard; and how even the split is.
func TestScrapeShardOf_GrowingMovesFewAgents(t *testing.T) {
	const ids = 20000
	for n := 2; n <= 8; n++ {
		t.Run(fmt.Sprintf("%d to %d shards", n, n+1), func(t *testing.T) {
			moved := 0
			sizes := make([]int, n+1)
			for i := range ids {
				id := fmt.Sprintf("agent-%06d", i)
				before, after := ScrapeShardOf(id, n), ScrapeShardOf(id, n+1)
				sizes[after]++
				if before != after {
					moved++
					if after != n {
						t.Fatalf("%s moved from shard %d to old shard %d", id, before, after)
					}
				}
			}
			frac := float64(moved) / ids
			ideal := 1 / float64(n+1)
			if frac > ideal+0.02 || frac < ideal-0.02 {
				t.Errorf("%.1f %% of agents moved, want about %.1f %%", 100*frac, 100*ideal)
			}
			if n == 3 && frac > 0.30 {
				t.Errorf("growing from 3 to 4 shards moved %.1f %% of agents, want at most 30 %%", 100*frac)
			}
			for s, size := range sizes {
				if dev := float64(size)/(ids*ideal) - 1; dev > 0.06 || dev < -0.06 {
					t.Errorf("shard %d holds %d agents, %.1f %% off an even split", s, size, 100*dev)
				}
			}
		})
	}
}

func TestParseFilter_Shards(t *testing.T) {
	for _, tc := range []struct {
		query   string
		want    ScrapeShard
		wantErr string
	}{
		{query: "", want: ScrapeShard{}},
		{query: "shard=0&shards=3", want: ScrapeShard{0, 3}},
		{query: "shards=3&shard=2&exporter=node", want: ScrapeShard{2, 3}},
		{query: "shard=0&shards=1", want: ScrapeShard{}},
		{query: fmt.Sprintf("shard=%d&shards=%d", MaxScrapeShards-1, MaxScrapeShards), want: ScrapeShard{MaxScrapeShards - 1, MaxScrapeShards}},
		{query: "shard=3&shards=3", wantErr: "shard=3 out of range"},
		{query: "shard=0&shards=0", wantErr: "shards=0 out of range"},
		{query: fmt.Sprintf("shard=0&shards=%d", MaxScrapeShards+1), wantErr: "out of range"},
		{query: "shard=0&shards=99999999", wantErr: "out of range"},
		{query: "shard=0&shards=999999999999", wantErr: "not a shard number"},
		{query: "shard=0&shards=18446744073709551617", wantErr: "not a shard number"},
		{query: "shard=-1&shards=3", wantErr: "not a shard number"},
		{query: "shard=%2B1&shards=3", wantErr: "not a shard number"},
		{query: "shard=one&shards=3", wantErr: "not a shard number"},
		{query: "shard=1&shards=3.0", wantErr: "not a shard number"},
		{query: "shard=&shards=3", wantErr: "not a shard number"},
		{query: "shard=%201&shards=3", wantErr: "not a shard number"},
		{query: "shard=1", wantErr: "together"},
		{query: "shards=3", wantErr: "together"},
		{query: "shard=1&shard=2&shards=3", wantErr: "once each"},
	} {
		t.Run(tc.query, func(t *testing.T) {
			q, err := url.ParseQuery(tc.query)
			if err != nil {
				t.Fatal(err)
			}
			f, err := ParseFilter(q)
			if errtest.Want(t, err, tc.wantErr) {
				return
			}
			if f.Shard != tc.want {
				t.Errorf("shard %+v, want %+v", f.Shard, tc.want)
			}
		})
	}
}

// shardAgents reads the agent ids of a body.
func shardAgents(t *testing.T, b Body) []string {
	t.Helper()
	var ids []string
	for _, g := range httpsdtest.DecodeGroups(t, joinBody(b)) {
		ids = append(ids, g.Labels[protocol.MetaAgentID])
	}
	return slices.Compact(ids)
}

// TestSDCache_Shards: the scrape shards of a filter partition its targets
// by ScrapeShardOf, come from one view, and only the shard of a changed
// agent changes.
func TestSDCache_Shards(t *testing.T) {
	r := newTestRegistry(t, memory.New(), registrytest.NewClock())
	for i := range 300 {
		a := testAgent(fmt.Sprintf("agent-%03d", i))
		if i%2 == 1 {
			a.Labels = labels.FromStrings("role", "db")
		}
		mustPut(t, r, a)
	}
	for _, tc := range []struct {
		name string
		base Filter
	}{
		{"all", Filter{}},
		{"role=db", Filter{Labels: [][2]string{{"role", "db"}}}},
		{"exporter=node", Filter{Exporters: []string{"node"}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := NewCache(r, nil)
			whole := c.Get(tc.base)
			wantIDs := shardAgents(t, whole)
			slices.Sort(wantIDs)
			const n = 3
			var union []string
			groups := 0
			for i := range n {
				f := tc.base
				f.Shard = ScrapeShard{Index: i, Count: n}
				b := c.Get(f)
				groups += len(httpsdtest.DecodeGroups(t, joinBody(b)))
				for _, id := range shardAgents(t, b) {
					if got := ScrapeShardOf(id, n); got != i {
						t.Errorf("agent %s served to shard %d, belongs to %d", id, i, got)
					}
					union = append(union, id)
				}
				if gz := httpsdtest.Gunzip(t, gzipBody(b)); !bytes.Equal(gz, joinBody(b)) {
					t.Errorf("shard %d: gzip body differs from identity body", i)
				}
			}
			slices.Sort(union)
			if !slices.Equal(union, wantIDs) {
				t.Errorf("shards hold %d agents, the whole list %d", len(union), len(wantIDs))
			}
			if want := len(httpsdtest.DecodeGroups(t, joinBody(whole))); groups != want {
				t.Errorf("shards hold %d groups, the whole list %d", groups, want)
			}
			if len(c.views) != 2 {
				t.Errorf("%d cached views, want 2 (unsharded and one for 3 shards)", len(c.views))
			}
		})
	}

	t.Run("change", func(t *testing.T) {
		c := NewCache(r, nil)
		const n = 4
		tags := make([]string, n)
		for i := range n {
			tags[i] = c.Get(Filter{Shard: ScrapeShard{i, n}}).ETag(false)
		}
		id := "agent-007"
		if _, err := r.Update(context.Background(), id, func(a *store.Agent) error {
			a.Maintenance = true
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		owner := ScrapeShardOf(id, n)
		for i := range n {
			b := c.Get(Filter{Shard: ScrapeShard{i, n}})
			if changed := b.ETag(false) != tags[i]; changed != (i == owner) {
				t.Errorf("shard %d: ETag changed=%v, want %v (agent in shard %d)", i, changed, i == owner, owner)
			}
			if i == owner && !bytes.Contains(joinBody(b), []byte(`"`+protocol.MetaMaintenance+`":"true"`)) {
				t.Errorf("shard %d does not show the maintenance change", i)
			}
		}
	})
}

// TestSDCache_ETag: an ETag changes exactly when the content does, and
// differs between filters, shards and encodings.
func TestSDCache_ETag(t *testing.T) {
	r := newTestRegistry(t, memory.New(), registrytest.NewClock())
	for i := range 50 {
		mustPut(t, r, testAgent(fmt.Sprintf("agent-%02d", i)))
	}
	c := NewCache(r, nil)
	seen := map[string]string{}
	for _, f := range []Filter{
		{},
		{Exporters: []string{"node"}},
		{Shard: ScrapeShard{0, 2}},
		{Shard: ScrapeShard{1, 2}},
		{Shard: ScrapeShard{0, 3}},
	} {
		b := c.Get(f)
		for _, gz := range []bool{false, true} {
			tag := b.ETag(gz)
			if !strings.HasPrefix(tag, `"`) || !strings.HasSuffix(tag, `"`) {
				t.Errorf("ETag %s is not quoted", tag)
			}
			what := fmt.Sprintf("%+v gzip=%v", f, gz)
			if other, dup := seen[tag]; dup {
				t.Errorf("%s and %s share ETag %s", what, other, tag)
			}
			seen[tag] = what
			if again := c.Get(f).ETag(gz); again != tag {
				t.Errorf("%s: ETag %s became %s without a change", what, tag, again)
			}
		}
	}

	before := c.Get(Filter{}).ETag(false)
	// Writing an agent exactly as it was moves the registry's generation but
	// not the content: the ETag stays, so clients keep their 304s.
	mustPut(t, r, testAgent("agent-01"))
	if after := c.Get(Filter{}).ETag(false); after != before {
		t.Errorf("ETag changed from %s to %s for identical content", before, after)
	}
	mustPut(t, r, testAgent("agent-new"))
	if after := c.Get(Filter{}).ETag(false); after == before {
		t.Error("ETag unchanged after an agent joined")
	}
	if other := NewCache(r, nil).Get(Filter{}).ETag(false); other == c.Get(Filter{}).ETag(false) {
		t.Error("two caches (a restarted server) issued the same ETag")
	}
}

func TestETagMatches(t *testing.T) {
	const tag = `"abc-1"`
	for _, tc := range []struct {
		header string
		want   bool
	}{
		{"", false},
		{`"abc-1"`, true},
		{`W/"abc-1"`, true},
		{`"x", "abc-1"`, true},
		{`*`, true},
		{`"abc-1-gzip"`, false},
		{`abc-1`, false},
		{`"abc-2"`, false},
	} {
		if got := ETagMatches(tc.header, tag); got != tc.want {
			t.Errorf("If-None-Match %q: %v, want %v", tc.header, got, tc.want)
		}
	}
}

func TestFNV64a_MatchesHashFNV(t *testing.T) {
	for _, s := range []string{"", "a", "agent-1", "01HZX3K9Q7V5W2M8N4P6R0T1Y3", "\xff\x00"} {
		h := fnv.New64a()
		_, _ = h.Write([]byte(s))
		if got, want := fnv64a(s), h.Sum64(); got != want {
			t.Errorf("fnv64a(%q) = %x, want %x", s, got, want)
		}
	}
}
