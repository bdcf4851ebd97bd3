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
	"strings"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// maxInterned bounds each table of an interner. Fleets have a handful of
// exporter lists and label sets shared by many hosts; past the bound, new
// values are simply kept per agent, so hosts with unique labels cost what
// they would without interning and the tables cannot grow without limit.
const maxInterned = 4096

// interner shares the exporter lists and label sets that agents have in
// common, so that 100,000 hosts running the same exporters hold one copy of
// the list instead of 100,000 (about 120 bytes per agent). Shared values are
// never modified: records are replaced, not mutated, and Agent.clone copies
// the exporter list for anyone who may change it. An interner is not safe
// for concurrent use; the registry calls it under its write lock.
type interner struct {
	exporters map[string][]protocol.Exporter
	labelSets map[uint64]labels.Labels
	key       strings.Builder
}

func newInterner() *interner {
	return &interner{exporters: make(map[string][]protocol.Exporter), labelSets: make(map[uint64]labels.Labels)}
}

// agent replaces a's exporter list and label sets by shared equal ones.
func (in *interner) agent(a *store.Agent) {
	a.Exporters = in.exporterList(a.Exporters)
	a.Labels = in.labelSet(a.Labels)
	a.PinnedLabels = in.labelSet(a.PinnedLabels)
}

func (in *interner) exporterList(list []protocol.Exporter) []protocol.Exporter {
	if len(list) == 0 {
		return list
	}
	in.key.Reset()
	for _, e := range list {
		in.key.WriteString(e.Name)
		in.key.WriteByte(0)
		in.key.WriteString(e.Path)
		in.key.WriteByte(0)
	}
	k := in.key.String()
	if shared, ok := in.exporters[k]; ok {
		return shared
	}
	if len(in.exporters) < maxInterned {
		in.exporters[k] = list
	}
	return list
}

func (in *interner) labelSet(ls labels.Labels) labels.Labels {
	if ls.IsEmpty() {
		return ls
	}
	h := ls.Hash()
	if shared, ok := in.labelSets[h]; ok {
		if labels.Equal(shared, ls) {
			return shared
		}
		return ls // a hash collision: keep this one unshared
	}
	if len(in.labelSets) < maxInterned {
		in.labelSets[h] = ls
	}
	return ls
}
