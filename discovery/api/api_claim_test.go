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

package api

import (
	"context"
	"encoding/json"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/bolt"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/etcd"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
	"github.com/baremetal-sd/baremetal_sd/internal/etcdtest"
)

// flakyStore fails the next n registration writes with ErrUnavailable, as
// a store does whose backend is unreachable.
type flakyStore struct {
	store.Store
	fail atomic.Int32
}

func (s *flakyStore) failing() bool {
	for {
		n := s.fail.Load()
		if n <= 0 {
			return false
		}
		if s.fail.CompareAndSwap(n, n-1) {
			return true
		}
	}
}

func (s *flakyStore) Put(ctx context.Context, a *store.Agent) error {
	if s.failing() {
		return store.ErrUnavailable
	}
	return s.Store.Put(ctx, a)
}

func (s *flakyStore) Update(ctx context.Context, id string, claim *store.TokenClaim, fn store.UpdateFunc) (*store.Agent, error) {
	if s.failing() {
		return nil, store.ErrUnavailable
	}
	return s.Store.Update(ctx, id, claim, fn)
}

// TestAPIClaim_FailedRegistrationKeepsToken: a single-use token is used up
// only by a registration that was stored. A registration the store failed
// (503) leaves it usable, so the agent's retry succeeds; once used, it is
// refused as reused and nothing more is stored.
func TestAPIClaim_FailedRegistrationKeepsToken(t *testing.T) {
	c := etcdtest.Start(t, 1)
	stores := map[string]func(t *testing.T) store.Store{
		"memory": func(*testing.T) store.Store { return memory.New() },
		"bolt": func(t *testing.T) store.Store {
			s, err := bolt.Open(filepath.Join(t.TempDir(), "registry.db"), bolt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		},
		"etcd": func(t *testing.T) store.Store { return registrytest.OpenEtcdStore(t, c, "", etcd.Options{}) },
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			st := &flakyStore{Store: open(t)}
			h := newReplicaHarness(t, t.TempDir(), st)
			tok := h.token(ca.TokenSpec{SingleUse: true})

			st.fail.Store(1)
			if rep := h.do(h.client(nil), "POST", protocol.PathRegister, tok, registerBody(t, nil)); rep.status != http.StatusServiceUnavailable {
				t.Fatalf("register with the store failing: %d %s, want 503", rep.status, rep.body)
			}
			rep := h.do(h.client(nil), "POST", protocol.PathRegister, tok, registerBody(t, nil))
			if rep.status != http.StatusOK {
				t.Fatalf("retry after the failed registration: %d %s, want 200", rep.status, rep.body)
			}
			var resp protocol.CertificateResponse
			if err := json.Unmarshal(rep.body, &resp); err != nil {
				t.Fatal(err)
			}

			rep = h.do(h.client(nil), "POST", protocol.PathRegister, tok, registerBody(t, func(r *protocol.RegisterRequest) { r.Hostname = "other.example.com" }))
			if rep.status != http.StatusUnauthorized {
				t.Fatalf("third use: %d %s, want 401", rep.status, rep.body)
			}
			if got := testutil.ToFloat64(h.metrics.TokenRejections.WithLabelValues("reused")); got != 1 {
				t.Errorf("reused rejections %v, want 1", got)
			}
			agents, err := st.List(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if len(agents) != 1 || agents[0].ID != resp.AgentID {
				t.Fatalf("stored %d agents (%+v), want only %s", len(agents), agents, resp.AgentID)
			}
		})
	}
}
