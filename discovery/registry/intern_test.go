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
	"fmt"
	"testing"
	"unsafe"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

func TestInterner_SharesEqualValues(t *testing.T) {
	in := newInterner()
	mk := func(role string) *store.Agent {
		return &store.Agent{
			Labels:    labels.FromStrings("role", role, "dc", "east"),
			Exporters: []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
		}
	}
	a, b, c := mk("db"), mk("db"), mk("web")
	in.agent(a)
	in.agent(b)
	in.agent(c)
	if &a.Exporters[0] != &b.Exporters[0] || &a.Exporters[0] != &c.Exporters[0] {
		t.Error("equal exporter lists are not shared")
	}
	if unsafe.StringData(a.Labels.String()) == nil || !labels.Equal(a.Labels, b.Labels) {
		t.Fatal("labels changed by interning")
	}
	if labels.Equal(a.Labels, c.Labels) {
		t.Error("different label sets were merged")
	}
	// Distinct exporter lists stay distinct.
	d := &store.Agent{Exporters: []protocol.Exporter{{Name: "node", Path: "/other"}}}
	in.agent(d)
	if d.Exporters[0].Path != "/other" {
		t.Errorf("exporter list replaced by another: %v", d.Exporters)
	}
}

func TestInterner_Bounded(t *testing.T) {
	in := newInterner()
	for i := range 2 * maxInterned {
		a := &store.Agent{
			Labels:    labels.FromStrings("host", fmt.Sprint(i)),
			Exporters: []protocol.Exporter{{Name: fmt.Sprintf("e%d", i), Path: "/p"}},
		}
		in.agent(a)
		if a.Labels.Get("host") != fmt.Sprint(i) || a.Exporters[0].Name != fmt.Sprintf("e%d", i) {
			t.Fatalf("agent %d changed by interning: %v %v", i, a.Labels, a.Exporters)
		}
	}
	if len(in.exporters) > maxInterned || len(in.labelSets) > maxInterned {
		t.Errorf("tables grew to %d exporter lists and %d label sets, bound %d", len(in.exporters), len(in.labelSets), maxInterned)
	}
}
