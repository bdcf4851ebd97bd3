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
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/bolt"
)

// fullDiskStore fails writes the way bolt does on a full filesystem
// (a *PathError wrapping ENOSPC or EDQUOT, wrapped again by the store)
// while full is set.
type fullDiskStore struct {
	store.Store
	errno syscall.Errno
	full  atomic.Bool
}

func (s *fullDiskStore) err(id string) error {
	return fmt.Errorf("update agent %q: %w", id, &os.PathError{Op: "write", Path: "registry.db", Err: s.errno})
}

func (s *fullDiskStore) Put(ctx context.Context, a *store.Agent) error {
	if s.full.Load() {
		return s.err(a.ID)
	}
	return s.Store.Put(ctx, a)
}

func (s *fullDiskStore) Update(ctx context.Context, id string, claim *store.TokenClaim, fn store.UpdateFunc) (*store.Agent, error) {
	if s.full.Load() {
		return nil, s.err(id)
	}
	return s.Store.Update(ctx, id, claim, fn)
}

// TestAPI_DiskFullAnswers503WithReason: found by the chaos harness
// (e2e/chaos_test.go), where registrations on a full tmpfs under the bolt
// data directory were answered 500 "internal error". A write refused for
// lack of space is a 503 that says why, counted as no_space; reads keep
// working, and once there is space the same request succeeds without a
// restart.
func TestAPI_DiskFullAnswers503WithReason(t *testing.T) {
	for _, errno := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT} {
		t.Run(errno.Error(), func(t *testing.T) {
			bolt, err := bolt.Open(filepath.Join(t.TempDir(), "registry.db"), bolt.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { bolt.Close() })
			store := &fullDiskStore{Store: bolt, errno: errno}
			h := newReplicaHarness(t, t.TempDir(), store)
			tok := h.token(ca.TokenSpec{})

			store.full.Store(true)
			rep := h.do(h.client(nil), "POST", protocol.PathRegister, tok, registerBody(t, nil))
			if rep.status != http.StatusServiceUnavailable {
				t.Fatalf("register on a full disk: %d %s, want 503", rep.status, rep.body)
			}
			if !strings.Contains(string(rep.body), "out of disk space") {
				t.Errorf("register on a full disk: body %s does not say why", rep.body)
			}
			if got := testutil.ToFloat64(h.metrics.Registrations.WithLabelValues("no_space")); got != 1 {
				t.Errorf("registrations{result=no_space} = %v, want 1", got)
			}
			prom := h.clientCert(ca.RoleDiscovery)
			sd := h.do(h.client(&prom), "GET", protocol.PathDiscovery, "", nil)
			if sd.status != http.StatusOK {
				t.Errorf("http_sd on a full disk: %d %s, want 200", sd.status, sd.body)
			}

			store.full.Store(false)
			if rep := h.do(h.client(nil), "POST", protocol.PathRegister, tok, registerBody(t, nil)); rep.status != http.StatusOK {
				t.Fatalf("register once there is space: %d %s, want 200", rep.status, rep.body)
			}
		})
	}
}
