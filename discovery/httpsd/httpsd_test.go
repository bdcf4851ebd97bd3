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
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd/httpsdtest"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
)

// joinBody is the identity response: the JSON, inflated from the cache.
func joinBody(b Body) []byte { return bodyBytes(b, false) }

// gzipBody is the gzip response.
func gzipBody(b Body) []byte { return bodyBytes(b, true) }

// bodyBytes writes a response as the handler does and checks its length
// against the one Body announces for Content-Length.
func bodyBytes(b Body, gzip bool) []byte {
	var buf bytes.Buffer
	write, want := b.WriteJSON, b.Size
	if gzip {
		write, want = b.WriteGzip, b.GzipSize
	}
	if err := write(&buf); err != nil {
		panic(err)
	}
	if buf.Len() != want {
		panic(fmt.Sprintf("body of %d bytes, announced %d (gzip %v)", buf.Len(), want, gzip))
	}
	return buf.Bytes()
}

func TestSDCache_Empty(t *testing.T) {
	r := newTestRegistry(t, memory.New(), registrytest.NewClock())
	c := NewCache(r, nil)
	if got := joinBody(c.Get(Filter{})); string(got) != "[]" {
		t.Fatalf("empty registry body %q, want []", got)
	}
	if got := httpsdtest.Gunzip(t, gzipBody(c.Get(Filter{}))); string(got) != "[]" {
		t.Fatalf("empty registry gzip body %q, want []", got)
	}
}

func TestSDCache_Groups(t *testing.T) {
	clock := registrytest.NewClock()
	r := newTestRegistry(t, memory.New(), clock)
	a := testAgent("a")
	a.Address = "2001:db8::1"
	a.Labels = labels.FromStrings("role", "db", "quote", "say \"hi\"\n\u2028é")
	a.Maintenance = true
	mustPut(t, r, a)
	c := NewCache(r, nil)

	got := httpsdtest.DecodeGroups(t, joinBody(c.Get(Filter{})))
	base := map[string]string{
		protocol.MetaAddress:               "2001:db8::1",
		protocol.MetaAgentID:               "a",
		protocol.MetaHostname:              "a.example.com",
		protocol.MetaMaintenance:           "true",
		protocol.MetaLabelPrefix + "role":  "db",
		protocol.MetaLabelPrefix + "quote": "say \"hi\"\n\u2028é",
		"__scheme__":                       "https",
	}
	want := []httpsdtest.TargetGroup{
		{Targets: []string{"[2001:db8::1]:9956"}, Labels: with(base, protocol.MetaExporter, "agent", "__metrics_path__", "/metrics")},
		{Targets: []string{"[2001:db8::1]:9956"}, Labels: with(base, protocol.MetaExporter, "node", "__metrics_path__", "/exporters/node/metrics")},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("groups\n got %+v\nwant %+v", got, want)
	}
}

func with(base map[string]string, kv ...string) map[string]string {
	m := make(map[string]string, len(base)+len(kv)/2)
	for k, v := range base {
		m[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return m
}

func TestSDCache_Filters(t *testing.T) {
	clock := registrytest.NewClock()
	r := newTestRegistry(t, memory.New(), clock)
	web := testAgent("web1")
	db := testAgent("db1")
	db.Labels = labels.FromStrings("role", "database")
	db.Exporters = append(db.Exporters, protocol.Exporter{Name: "postgres", Path: "/exporters/postgres/metrics"})
	mustPut(t, r, web)
	mustPut(t, r, db)
	c := NewCache(r, nil)

	tests := []struct {
		query string
		want  []string // agent_id/exporter
	}{
		{"", []string{"db1/agent", "db1/node", "db1/postgres", "web1/agent", "web1/node"}},
		{"exporter=node", []string{"db1/node", "web1/node"}},
		{"exporter=postgres&exporter=agent", []string{"db1/agent", "db1/postgres", "web1/agent"}},
		{"label=role=database", []string{"db1/agent", "db1/node", "db1/postgres"}},
		{"label=role=database&exporter=node", []string{"db1/node"}},
		{"label=role=nothing", nil},
	}
	for _, tt := range tests {
		t.Run(tt.query, func(t *testing.T) {
			q, _ := url.ParseQuery(tt.query)
			f, err := ParseFilter(q)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, g := range httpsdtest.DecodeGroups(t, joinBody(c.Get(f))) {
				got = append(got, g.Labels[protocol.MetaAgentID]+"/"+g.Labels[protocol.MetaExporter])
			}
			// Order is stable but follows the registry's shards, not names.
			sort.Strings(got)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestSDCache_Tunnel checks that tunneled agents are listed by hostname,
// which their certificate covers and the server routes CONNECT by, with
// the tunnel meta label, and that ?tunnel= keeps them apart.
func TestSDCache_Tunnel(t *testing.T) {
	r := newTestRegistry(t, memory.New(), registrytest.NewClock())
	direct := testAgent("direct")
	tunneled := testAgent("nat")
	tunneled.Address = "10.0.0.5"
	tunneled.Tunnel = true
	mustPut(t, r, direct)
	mustPut(t, r, tunneled)
	c := NewCache(r, nil)
	for _, tc := range []struct {
		query string
		want  []string // agent_id target tunnel-label
	}{
		{"exporter=node", []string{"direct " + direct.Address + ":9956 ", "nat nat.example.com:9956 true"}},
		{"exporter=node&tunnel=true", []string{"nat nat.example.com:9956 true"}},
		{"exporter=node&tunnel=false", []string{"direct " + direct.Address + ":9956 "}},
	} {
		t.Run(tc.query, func(t *testing.T) {
			q, _ := url.ParseQuery(tc.query)
			f, err := ParseFilter(q)
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, g := range httpsdtest.DecodeGroups(t, joinBody(c.Get(f))) {
				got = append(got, g.Labels[protocol.MetaAgentID]+" "+strings.Join(g.Targets, ",")+" "+g.Labels[protocol.MetaTunnel])
			}
			sort.Strings(got)
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseFilter_Errors(t *testing.T) {
	for _, q := range []string{"exporter=", "label=nokey", "label==v", "job=node", "tunnel=yes", "tunnel=true&tunnel=false", "tunnel="} {
		v, _ := url.ParseQuery(q)
		if _, err := ParseFilter(v); err == nil {
			t.Errorf("ParseFilter(%q) accepted", q)
		}
	}
}

// TestSDCache_IncrementalRebuild checks that a change shows up in both the
// identity and the gzip body and that only what changed is rebuilt.
func TestSDCache_IncrementalRebuild(t *testing.T) {
	clock := registrytest.NewClock()
	r := newTestRegistry(t, memory.New(), clock)
	for i := 0; i < 500; i++ {
		mustPut(t, r, testAgent(fmt.Sprintf("agent-%03d", i)))
	}
	c := NewCache(r, nil)
	first := joinBody(c.Get(Filter{}))
	if n := len(httpsdtest.DecodeGroups(t, first)); n != 1000 {
		t.Fatalf("%d groups, want 1000", n)
	}
	if again := joinBody(c.Get(Filter{})); !bytes.Equal(first, again) {
		t.Fatal("body changed without a registry change")
	}

	v := c.views[Filter{}.key()]
	before := make([]*byte, registry.ShardCount)
	for i := range v.parts[0].frags {
		if len(v.parts[0].frags[i].deflate) > 0 {
			before[i] = &v.parts[0].frags[i].deflate[0]
		}
	}
	if err := r.Delete(context.Background(), "agent-042"); err != nil {
		t.Fatal(err)
	}
	after := joinBody(c.Get(Filter{}))
	groups := httpsdtest.DecodeGroups(t, after)
	if len(groups) != 998 {
		t.Fatalf("%d groups after delete, want 998", len(groups))
	}
	rebuilt := 0
	for i := range v.parts[0].frags {
		if len(v.parts[0].frags[i].deflate) > 0 && &v.parts[0].frags[i].deflate[0] != before[i] {
			rebuilt++
		}
	}
	if rebuilt != 1 {
		t.Errorf("%d fragments rebuilt for one deleted agent, want 1", rebuilt)
	}
	if gz := httpsdtest.Gunzip(t, gzipBody(c.Get(Filter{}))); !bytes.Equal(gz, after) {
		t.Fatal("gzip body differs from identity body")
	}
}

func TestSDCache_ExpiredLeavesAtOnce(t *testing.T) {
	clock := registrytest.NewClock()
	r := newTestRegistry(t, memory.New(), clock)
	mustPut(t, r, testAgent("a"))
	mustPut(t, r, testAgent("b"))
	c := NewCache(r, nil)
	if n := len(httpsdtest.DecodeGroups(t, joinBody(c.Get(Filter{})))); n != 4 {
		t.Fatalf("%d groups, want 4", n)
	}
	clock.Advance(50 * time.Second)
	if err := r.Heartbeat("b", "s-b", "", nil); err != nil {
		t.Fatal(err)
	}
	clock.Advance(11 * time.Second)
	r.Sweep(context.Background())
	groups := httpsdtest.DecodeGroups(t, joinBody(c.Get(Filter{})))
	if len(groups) != 2 || groups[0].Labels[protocol.MetaAgentID] != "b" || groups[1].Labels[protocol.MetaAgentID] != "b" {
		t.Fatalf("after a's TTL: %+v, want only b's groups", groups)
	}
	if err := r.Heartbeat("a", "s-a", "", nil); err != nil {
		t.Fatal(err)
	}
	if n := len(httpsdtest.DecodeGroups(t, joinBody(c.Get(Filter{})))); n != 4 {
		t.Fatalf("%d groups after a came back, want 4", n)
	}
}

func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "quote\"back\\slash", "\x00\x1f\n\t", "\u2028\u2029", "é日本", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		enc := appendJSONString(nil, s)
		var got string
		if err := json.Unmarshal(enc, &got); err != nil {
			t.Fatalf("invalid JSON %q for %q: %v", enc, s, err)
		}
		want, _ := json.Marshal(s)
		var wantStr string
		_ = json.Unmarshal(want, &wantStr)
		if got != wantStr {
			t.Fatalf("round trip of %q: got %q, want %q", s, got, wantStr)
		}
	})
}

func FuzzParseFilter(f *testing.F) {
	for _, s := range []string{
		"exporter=node", "label=role=db&exporter=a", "label=%3D%3D", "x=1", "exporter=&label=",
		"shard=1&shards=3", "shard=0&shards=1&exporter=node", "shard=3&shards=3", "shard=-0&shards=2",
		"shard=1&shard=1&shards=2", "shards=99999999999999999999&shard=0",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, err := ParseFilter(q)
		if err != nil {
			return
		}
		_ = flt.key()
		s := flt.Shard
		if s != (ScrapeShard{}) && (s.Count < 2 || s.Count > MaxScrapeShards || s.Index < 0 || s.Index >= s.Count) {
			t.Fatalf("%q parsed to shard %+v", raw, s)
		}
		if s.Sharded() && ScrapeShardOf(raw, s.Count) >= s.Count {
			t.Fatalf("assignment out of range for %d shards", s.Count)
		}
	})
}

func FuzzETagMatches(f *testing.F) {
	for _, s := range []string{`"a"`, `W/"a", "b"`, `*`, `,,`, ``} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, header string) {
		const tag = `"abc-1"`
		if ETagMatches(header, tag) && !strings.Contains(header, tag) && !strings.Contains(header, "*") {
			t.Fatalf("%q matched %s", header, tag)
		}
	})
}

// TestSDCache_EvictsBeyondBounds: distinct filters beyond maxViews do not
// pile up cached views, and the view being served survives eviction.
func TestSDCache_EvictsBeyondBounds(t *testing.T) {
	r := newTestRegistry(t, memory.New(), registrytest.NewClock())
	mustPut(t, r, testAgent("a"))
	c := NewCache(r, nil)
	for i := range 3 * maxViews {
		f := Filter{Exporters: []string{fmt.Sprintf("e%d", i)}}
		c.Get(f)
		if _, ok := c.views[f.key()]; !ok {
			t.Fatalf("view %d evicted while served", i)
		}
	}
	if len(c.views) > maxViews {
		t.Errorf("%d cached views, want at most %d", len(c.views), maxViews)
	}
}
