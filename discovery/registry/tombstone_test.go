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
	"errors"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
)

// TestRegistry_TombstonePurgedAfterRenewGrace: a tombstone lives as long as
// a certificate of the agent can register again, over mTLS or by proof of
// its key after expiry, and no longer.
func TestRegistry_TombstonePurgedAfterRenewGrace(t *testing.T) {
	clock := registrytest.NewClock()
	store := memory.New()
	r := New(Config{Store: store, TTL: time.Minute, Retention: time.Hour, RenewGrace: 48 * time.Hour, Now: clock.Now})
	if err := r.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	a := testAgent("a")
	a.CertNotAfter = clock.Now().Add(24 * time.Hour)
	a.PrevCertSerial, a.PrevCertNotAfter = "s-old", clock.Now().Add(time.Hour)
	mustPut(t, r, a)

	for _, tt := range []struct {
		serial string
		want   error
	}{
		{"s-other", ErrSuperseded},
		{"s-a", nil},
		{"s-a", ErrDeregistered},
	} {
		if err := r.Deregister(ctx, "a", tt.serial); !errorIs(err, tt.want) {
			t.Fatalf("deregister with %s: %v, want %v", tt.serial, err, tt.want)
		}
	}
	if err := r.Heartbeat("a", "s-a", "", nil); !errorIs(err, ErrDeregistered) {
		t.Fatalf("heartbeat of a tombstone: %v, want %v", err, ErrDeregistered)
	}
	for _, step := range []struct {
		advance time.Duration
		kept    bool
	}{
		{time.Hour, true}, // past the TTL and the expiry retention
		// The certificate expires at +24h, its grace window ends at +72h.
		{72*time.Hour - time.Hour - time.Minute, true},
		{2 * time.Minute, false},
	} {
		clock.Advance(step.advance)
		r.Sweep(ctx)
		v, ok := r.Get("a")
		if ok != step.kept || (ok && (v.State != discovery.StateDeregistered || r.listed("a"))) {
			t.Fatalf("at %v: kept %v (state %q, listed %v), want kept %v", clock.Now(), ok, v.State, r.listed("a"), step.kept)
		}
		if stored, _ := store.List(ctx); (len(stored) == 1) != step.kept {
			t.Fatalf("at %v: stored %+v, want kept %v", clock.Now(), stored, step.kept)
		}
	}
}

func errorIs(err, want error) bool {
	if want == nil {
		return err == nil
	}
	return errors.Is(err, want)
}

// TestRegistry_ExpiredAgentRetiredAsTombstone: going silent past the
// retention must not shed what deregistering no longer sheds. An expired
// agent whose certificate can still register becomes a tombstone instead of
// being purged; one whose certificates are past the grace window is purged.
func TestRegistry_ExpiredAgentRetiredAsTombstone(t *testing.T) {
	tests := []struct {
		name      string
		notAfter  time.Duration // certificate expiry, from the registration
		tombstone bool
	}{
		{"certificate still valid", 24 * time.Hour, true},
		{"certificate expired, within the grace window", -time.Hour, true},
		{"certificate past the grace window", -49 * time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := registrytest.NewClock()
			store := memory.New()
			r := New(Config{Store: store, TTL: time.Minute, Retention: time.Hour, RenewGrace: 48 * time.Hour, Now: clock.Now})
			ctx := context.Background()
			if err := r.Load(ctx); err != nil {
				t.Fatal(err)
			}
			a := testAgent("a")
			a.PinnedLabels = a.Labels
			a.Maintenance = true
			a.CertNotAfter = clock.Now().Add(tt.notAfter)
			mustPut(t, r, a)
			clock.Advance(time.Minute + time.Hour + time.Second) // past TTL and retention
			r.Sweep(ctx)
			v, ok := r.Get("a")
			if ok != tt.tombstone || (ok && (v.State != discovery.StateDeregistered || !v.Maintenance || v.PinnedLabels.IsEmpty())) {
				t.Fatalf("after the retention: kept %v as %q (%+v), want tombstone %v", ok, v.State, v.Agent, tt.tombstone)
			}
			if stored, _ := store.List(ctx); (len(stored) == 1) != tt.tombstone {
				t.Fatalf("stored %+v, want tombstone %v", stored, tt.tombstone)
			}
		})
	}
}
