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
	"context"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/storetest"
)

// testAgent is the conformance suite's complete, valid record.
func testAgent(id string) *store.Agent { return storetest.NewAgent(id) }

func newTestRegistry(t *testing.T, st store.Store, clock *registrytest.Clock) *registry.Registry {
	t.Helper()
	r := registry.New(registry.Config{
		Store:             st,
		TTL:               time.Minute,
		HeartbeatInterval: 15 * time.Second,
		Retention:         time.Hour,
		Now:               clock.Now,
	})
	if err := r.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	return r
}

func mustPut(t *testing.T, r *registry.Registry, a *store.Agent) {
	t.Helper()
	a.LastSeen = r.Config().Now()
	if err := r.Put(context.Background(), a); err != nil {
		t.Fatal(err)
	}
}
