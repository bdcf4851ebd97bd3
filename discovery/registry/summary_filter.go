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

	"github.com/baremetal-sd/baremetal_sd/discovery"
)

// matchSummary reports whether f selects the entry in state st. Called under the
// registry's read lock, it looks at the record without copying it.
func matchSummary(f *discovery.SummaryFilter, e *entry, st discovery.AgentState) bool {
	if f.State != "" && st != f.State {
		return false
	}
	if f.Hostname != "" && !containsFold(e.rec.Hostname, f.Hostname) {
		return false
	}
	if f.LabelName != "" && (!e.rec.Labels.Has(f.LabelName) || e.rec.Labels.Get(f.LabelName) != f.LabelValue) {
		return false
	}
	if f.ExporterDown {
		h := e.health.Load()
		if h == nil {
			return false
		}
		down := false
		for i := range h.exps {
			down = down || h.exps[i].state == healthDown
		}
		if !down {
			return false
		}
	}
	return true
}

// containsFold reports whether sub is in s, ignoring ASCII and Unicode case.
func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}
