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
	"slices"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
)

func TestRegistry_SummarizeMatching(t *testing.T) {
	clock := registrytest.NewClock()
	r := newTestRegistry(t, memory.New(), clock)
	for _, a := range []struct{ id, host, role string }{
		{"1", "DB1.example.com", "database"},
		{"2", "db2.example.com", "database"},
		{"3", "web1.example.com", "web"},
		{"4", "web2.example.com", ""},
	} {
		ag := testAgent(a.id)
		ag.Hostname = a.host
		ag.Labels = labels.EmptyLabels()
		if a.role != "" {
			ag.Labels = labels.FromStrings("role", a.role)
		}
		mustPut(t, r, ag)
	}
	r.ReportHealth("2", []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterDown}})
	r.ReportHealth("3", []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterUp}})
	tests := []struct {
		name string
		f    discovery.SummaryFilter
		want []string
	}{
		{"all", discovery.SummaryFilter{}, []string{"1", "2", "3", "4"}},
		{"hostname part, any case", discovery.SummaryFilter{Hostname: "db"}, []string{"1", "2"}},
		{"label", discovery.SummaryFilter{LabelName: "role", LabelValue: "web"}, []string{"3"}},
		{"label with an empty value is not an absent label", discovery.SummaryFilter{LabelName: "role", LabelValue: ""}, nil},
		{"exporter down", discovery.SummaryFilter{ExporterDown: true}, []string{"2"}},
		{"combined", discovery.SummaryFilter{Hostname: "db", LabelName: "role", LabelValue: "database", State: discovery.StateHealthy}, []string{"1", "2"}},
		{"other state", discovery.SummaryFilter{State: discovery.StateStale}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := r.SummarizeMatching(tt.f, 10)
			var got []string
			for _, a := range s.Agents {
				got = append(got, a.ID)
			}
			if !slices.Equal(got, tt.want) || s.Matching != len(tt.want) || s.Total != 4 {
				t.Fatalf("agents %v, matching %d, total %d; want %v, %d, 4", got, s.Matching, s.Total, tt.want, len(tt.want))
			}
		})
	}
}

// TestRegistry_GraceUntilMarksGracedAgents: an agent listed only because of
// the restart grace says until when; one that heartbeated since, or whose
// last heartbeat is recent, does not.
func TestRegistry_GraceUntilMarksGracedAgents(t *testing.T) {
	clock := registrytest.NewClock()
	st := memory.New()
	r := newTestRegistry(t, st, clock)
	mustPut(t, r, testAgent("old"))
	clock.Advance(time.Hour)
	mustPut(t, r, testAgent("recent"))
	clock.Advance(time.Second)

	r2 := newTestRegistry(t, st, clock)
	started := clock.Now()
	if v, _ := r2.Get("old"); v.State != discovery.StateStale || !v.GraceUntil.Equal(started.Add(time.Minute)) {
		t.Fatalf("old: %s, grace until %v; want stale, graced until %v", v.State, v.GraceUntil, started.Add(time.Minute))
	}
	if v, _ := r2.Get("recent"); !v.GraceUntil.IsZero() {
		t.Fatalf("an agent seen a second ago is marked graced until %v", v.GraceUntil)
	}
	if err := r2.Heartbeat("old", "s-old", "", nil); err != nil {
		t.Fatal(err)
	}
	if v, _ := r2.Get("old"); !v.GraceUntil.IsZero() {
		t.Fatalf("an agent that heartbeated is still marked graced until %v", v.GraceUntil)
	}
}
