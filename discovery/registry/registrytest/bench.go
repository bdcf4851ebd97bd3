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

package registrytest

import (
	"context"
	"strconv"
	"strings"
	"time"

	"github.com/baremetal-sd/baremetal_sd/bench/synthetic"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// BenchAgents is the fleet size of the scale goals in BENCHMARKS.md.
const BenchAgents = 100_000

// BenchStore is a store.Store that only lists synthetic agents, generated
// on each call, so that a registry's memory is measured without a store's
// copy. Writes succeed and keep nothing.
type BenchStore struct {
	// N is the number of agents, synthetic.Agent(0, Now) to
	// synthetic.Agent(N-1, Now).
	N   int
	Now time.Time
}

// List returns all N synthetic agents.
func (s BenchStore) List(context.Context) ([]store.Agent, error) {
	out := make([]store.Agent, s.N)
	for i := range out {
		out[i] = *synthetic.Agent(i, s.Now)
	}
	return out, nil
}

// Put keeps nothing.
func (BenchStore) Put(context.Context, *store.Agent) error { return nil }

// Delete keeps nothing.
func (BenchStore) Delete(context.Context, string) error { return nil }

// Touch keeps nothing.
func (BenchStore) Touch(context.Context, []store.Touch) error { return nil }

// Update hands fn the synthetic agent with that id as the stored record.
func (s BenchStore) Update(_ context.Context, id string, _ *store.TokenClaim, fn store.UpdateFunc) (*store.Agent, error) {
	n, err := strconv.Atoi(strings.TrimPrefix(id, synthetic.IDPrefix))
	if err != nil || n < 0 || n >= s.N {
		return nil, store.ErrNotFound
	}
	return fn(synthetic.Agent(n, s.Now))
}

// LiveSince is the zero time: the store has no live connection to lose.
func (BenchStore) LiveSince() time.Time { return time.Time{} }

// Watch returns nil: nothing else writes to the store.
func (BenchStore) Watch(context.Context) <-chan store.Event { return nil }

// Close does nothing.
func (BenchStore) Close() error { return nil }
