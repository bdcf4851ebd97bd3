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
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
)

// updateCountingStore counts Update calls: exporter health is written with
// them.
type updateCountingStore struct {
	store.Store
	mu      sync.Mutex
	updates int
}

func (s *updateCountingStore) Update(ctx context.Context, id string, claim *store.TokenClaim, fn store.UpdateFunc) (*store.Agent, error) {
	s.mu.Lock()
	s.updates++
	s.mu.Unlock()
	return s.Store.Update(ctx, id, claim, fn)
}

func (s *updateCountingStore) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.updates
}

func healthOf(t *testing.T, r *Registry, id string) []protocol.ExporterHealth {
	t.Helper()
	v, ok := r.Get(id)
	if !ok {
		t.Fatalf("agent %s missing", id)
	}
	return v.ExporterHealth
}

func TestRegistry_ExporterHealth(t *testing.T) {
	clock := registrytest.NewClock()
	st := &updateCountingStore{Store: memory.New()}
	r := newTestRegistry(t, st, clock)
	a := testAgent("a")
	a.Exporters = []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}, {Name: "mysqld", Path: "/exporters/mysqld/metrics"}}
	mustPut(t, r, a)
	ctx := context.Background()
	t0 := clock.Now()
	down := protocol.ExporterHealth{Name: "node", State: protocol.ExporterDown, Reason: "connect: connection refused", Since: t0, LastResult: t0}

	steps := []struct {
		name   string
		report []protocol.ExporterHealth
		want   []protocol.ExporterHealth
		// writes is how many store updates the next flush makes.
		writes int
	}{
		{
			name: "an agent that reports nothing: every exporter unknown",
			want: []protocol.ExporterHealth{{Name: "node", State: "unknown"}, {Name: "mysqld", State: "unknown"}},
		},
		{
			name:   "a failing exporter; unreported ones stay unknown, unregistered ones are dropped",
			report: []protocol.ExporterHealth{down, {Name: "not-registered", State: protocol.ExporterDown}},
			want:   []protocol.ExporterHealth{down, {Name: "mysqld", State: "unknown"}},
			writes: 1,
		},
		{
			name: "a new reason and result time alone stay in memory",
			report: []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterDown, Reason: "timeout: upstream timed out",
				Since: t0, LastResult: t0.Add(time.Minute)}},
			want: []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterDown, Reason: "timeout: upstream timed out",
				Since: t0, LastResult: t0.Add(time.Minute)}, {Name: "mysqld", State: "unknown"}},
		},
		{
			name: "recovery is a change",
			report: []protocol.ExporterHealth{
				{Name: "mysqld", State: protocol.ExporterUp, Since: t0, LastResult: t0},
				{Name: "node", State: protocol.ExporterUp, Since: t0.Add(2 * time.Minute), LastResult: t0.Add(2 * time.Minute)},
			},
			// Exporters that are all up share one list, without times.
			want:   []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterUp}, {Name: "mysqld", State: protocol.ExporterUp}},
			writes: 1,
		},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			clock.Advance(time.Second)
			if err := r.Heartbeat("a", "s-a", "", nil); err != nil {
				t.Fatal(err)
			}
			r.ReportHealth("a", s.report)
			if got := healthOf(t, r, "a"); fmt.Sprint(got) != fmt.Sprint(s.want) {
				t.Fatalf("health\n got %+v\nwant %+v", got, s.want)
			}
			before := st.count()
			r.Flush(ctx)
			r.Flush(ctx) // nothing changed since: no second write
			if got := st.count() - before; got != s.writes {
				t.Fatalf("flushes made %d store updates, want %d", got, s.writes)
			}
		})
	}
	t.Run("a restart reads what was written", func(t *testing.T) {
		stored := healthOf(t, newTestRegistry(t, st, clock), "a")
		want := healthOf(t, r, "a")
		if fmt.Sprint(stored) != fmt.Sprint(want) {
			t.Fatalf("after a restart\n got %+v\nwant %+v", stored, want)
		}
	})
	t.Run("a write of something else keeps the newer health in memory", func(t *testing.T) {
		clock.Advance(time.Second)
		r.ReportHealth("a", []protocol.ExporterHealth{down})
		if _, err := r.Update(ctx, "a", func(a *store.Agent) error { a.Maintenance = true; return nil }); err != nil {
			t.Fatal(err)
		}
		if got := healthOf(t, r, "a"); got[0].State != protocol.ExporterDown {
			t.Fatalf("maintenance change rolled health back to %+v", got)
		}
		before := st.count()
		r.Flush(ctx)
		if st.count()-before != 1 {
			t.Fatal("the newer health was not written after the other change")
		}
	})
}

// TestRegistry_ExporterHealthWritesAreBounded: a fleet-wide outage is
// written a bounded number of records per flush, and all of it in the end.
func TestRegistry_ExporterHealthWritesAreBounded(t *testing.T) {
	clock := registrytest.NewClock()
	st := &updateCountingStore{Store: memory.New()}
	r := newTestRegistry(t, st, clock)
	n := maxHealthWritesPerFlush + maxHealthWritesPerFlush/2
	for i := range n {
		mustPut(t, r, testAgent(fmt.Sprintf("a%d", i)))
	}
	for i := range n {
		r.ReportHealth(fmt.Sprintf("a%d", i), []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterDown, Reason: "timeout"}})
	}
	ctx := context.Background()
	for _, want := range []int{maxHealthWritesPerFlush, n - maxHealthWritesPerFlush, 0} {
		before := st.count()
		r.Flush(ctx)
		if got := st.count() - before; got != want {
			t.Fatalf("flush wrote %d records, want %d", got, want)
		}
	}
}

func TestExporterHealthCollector_CountsByState(t *testing.T) {
	clock := registrytest.NewClock()
	r := newTestRegistry(t, memory.New(), clock)
	ctx := context.Background()
	withExporters := func(id string, names ...string) *store.Agent {
		a := testAgent(id)
		a.Exporters = nil
		for _, n := range names {
			a.Exporters = append(a.Exporters, protocol.Exporter{Name: n, Path: "/exporters/" + n + "/metrics"})
		}
		return a
	}
	// "stale" stops heartbeating 31 s before the others are looked at.
	mustPut(t, r, withExporters("stale", "node"))
	r.ReportHealth("stale", []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterDown}})
	clock.Advance(31 * time.Second)
	mustPut(t, r, withExporters("down", "node", "mysqld"))
	r.ReportHealth("down", []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterDown}, {Name: "mysqld", State: protocol.ExporterUp}})
	mustPut(t, r, withExporters("up", "node"))
	r.ReportHealth("up", []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterUp}})
	mustPut(t, r, withExporters("old-agent", "node"))
	mustPut(t, r, withExporters("maintenance", "node"))
	r.ReportHealth("maintenance", []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterDown}})
	if _, err := r.Update(ctx, "maintenance", func(a *store.Agent) error { a.Maintenance = true; return nil }); err != nil {
		t.Fatal(err)
	}
	want := `
# HELP baremetal_sd_exporters ` + exporterHealthHelp + `
# TYPE baremetal_sd_exporters gauge
baremetal_sd_exporters{exporter="mysqld",state="down"} 0
baremetal_sd_exporters{exporter="mysqld",state="unknown"} 0
baremetal_sd_exporters{exporter="mysqld",state="up"} 1
baremetal_sd_exporters{exporter="node",state="down"} 1
baremetal_sd_exporters{exporter="node",state="unknown"} 2
baremetal_sd_exporters{exporter="node",state="up"} 1
`
	if err := testutil.CollectAndCompare(NewExporterHealthCollector(r), strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}

	t.Run("exporter names past the bound are summed up as other", func(t *testing.T) {
		r := newTestRegistry(t, memory.New(), clock)
		// Exporter eNN is on NN+1 agents, so the most common names are the
		// highest numbers.
		for i := range MaxExporterSeries + 3 {
			for j := 0; j <= i; j++ {
				id := fmt.Sprintf("h%d-%d", i, j)
				mustPut(t, r, withExporters(id, fmt.Sprintf("e%02d", i)))
				r.ReportHealth(id, []protocol.ExporterHealth{{Name: fmt.Sprintf("e%02d", i), State: protocol.ExporterDown}})
			}
		}
		counts := map[string]float64{}
		ch := make(chan prometheus.Metric, 1000)
		NewExporterHealthCollector(r).Collect(ch)
		close(ch)
		for m := range ch {
			var d dto.Metric
			_ = m.Write(&d)
			lbl := map[string]string{}
			for _, l := range d.GetLabel() {
				lbl[l.GetName()] = l.GetValue()
			}
			if lbl["state"] == "down" {
				counts[lbl["exporter"]] = d.GetGauge().GetValue()
			}
		}
		if len(counts) != MaxExporterSeries+1 {
			t.Fatalf("%d exporter names, want %d and other", len(counts), MaxExporterSeries)
		}
		// e00, e01 and e02 (1+2+3 agents) are the least common.
		if counts[OtherExporters] != 6 || counts["e00"] != 0 || counts["e03"] != 4 {
			t.Fatalf("other=%v e00=%v e03=%v, want 6, absent, 4", counts[OtherExporters], counts["e00"], counts["e03"])
		}
	})
}

// TestRegistry_ExporterHealthSharesAllUp: agents whose exporters are all up
// share one list; one with an exporter down has its own.
func TestRegistry_ExporterHealthSharesAllUp(t *testing.T) {
	r := newTestRegistry(t, memory.New(), registrytest.NewClock())
	now := time.Now()
	for _, id := range []string{"a", "b", "c"} {
		mustPut(t, r, testAgent(id))
	}
	up := []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterUp, Since: now, LastResult: now}}
	r.ReportHealth("a", up)
	r.ReportHealth("b", up)
	r.ReportHealth("c", []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterDown, Reason: "timeout", Since: now}})
	exps := func(id string) *exporterHealth {
		return &r.shards[shardOf(id)].agents[id].health.Load().exps[0]
	}
	if exps("a") != exps("b") {
		t.Error("two agents with all exporters up do not share their list")
	}
	if exps("c") == exps("a") || exps("c").state != healthDown {
		t.Error("an agent with an exporter down shares the list of the healthy ones")
	}
}
