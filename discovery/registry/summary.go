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
	"container/heap"
	"sort"

	"github.com/baremetal-sd/baremetal_sd/discovery"
)

// Summarize counts the agents by state and returns the first limit agents
// in state (all states when empty), sorted by hostname, then id. Tombstones
// are left out: they are not part of the fleet. Only the agents returned
// are copied: a page over 100,000 agents costs a pass over the registry, not
// a copy and a sort of it.
func (r *Registry) Summarize(state discovery.AgentState, limit int) discovery.Summary {
	return r.SummarizeMatching(discovery.SummaryFilter{State: state}, limit)
}

// SummarizeMatching is Summarize with a filter beyond the state: Matching
// and Agents are about the agents f selects, Total and Counts about the
// fleet.
func (r *Registry) SummarizeMatching(f discovery.SummaryFilter, limit int) discovery.Summary {
	now := r.cfg.Now()
	s := discovery.Summary{Counts: make(map[discovery.AgentState]int)}
	var first firstAgents
	r.mu.RLock()
	for i := range r.shards {
		for _, e := range r.shards[i].agents {
			st := r.state(e, now)
			if st == discovery.StateDeregistered {
				continue // a tombstone is not part of the fleet
			}
			s.Total++
			s.Counts[st]++
			if !matchSummary(&f, e, st) {
				continue
			}
			s.Matching++
			if limit <= 0 {
				continue
			}
			if len(first) < limit {
				heap.Push(&first, e)
			} else if less(e, first[0]) {
				first[0] = e
				heap.Fix(&first, 0)
			}
		}
	}
	sort.Slice(first, func(i, j int) bool { return less(first[i], first[j]) })
	s.Agents = make([]discovery.AgentView, 0, len(first))
	for _, e := range first {
		s.Agents = append(s.Agents, r.view(e, now))
	}
	r.mu.RUnlock()
	return s
}

// less orders entries by hostname, then id, as List does.
func less(a, b *entry) bool {
	if a.rec.Hostname != b.rec.Hostname {
		return a.rec.Hostname < b.rec.Hostname
	}
	return a.rec.ID < b.rec.ID
}

// firstAgents is a max-heap by display order: its root is the last of the
// agents kept, the one to drop when an earlier one comes.
type firstAgents []*entry

func (h firstAgents) Len() int           { return len(h) }
func (h firstAgents) Less(i, j int) bool { return less(h[j], h[i]) }
func (h firstAgents) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *firstAgents) Push(x any)        { *h = append(*h, x.(*entry)) }
func (h *firstAgents) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}
