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
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
)

// TestRegistry_RegisterRules: what a registration may replace, decided on
// the stored record. Each case is a hostile or stale credential except the
// first two, which show the rule lets the legitimate one through.
func TestRegistry_RegisterRules(t *testing.T) {
	tests := []struct {
		name string
		// prepare changes the stored agent "a" before the registration.
		prepare func(a *store.Agent, now time.Time)
		reg     func(now time.Time) Registration
		want    error
		wantAs  any
	}{
		{"token after the revocation re-admits", func(a *store.Agent, now time.Time) { a.RevokedAt = now.Add(-time.Hour) },
			func(now time.Time) Registration { return Registration{Token: &TokenGrant{IssuedAt: now}} }, nil, nil},
		{"current certificate", nil,
			func(time.Time) Registration { return Registration{Serial: "s-a"} }, nil, nil},
		{"token before the revocation", func(a *store.Agent, now time.Time) { a.RevokedAt = now },
			func(now time.Time) Registration {
				return Registration{Token: &TokenGrant{IssuedAt: now.Add(-time.Hour)}}
			}, ErrTokenBeforeRevocation, nil},
		{"token without issue time on a revoked agent", func(a *store.Agent, now time.Time) { a.RevokedAt = now },
			func(time.Time) Registration { return Registration{Token: &TokenGrant{}} }, ErrTokenBeforeRevocation, nil},
		{"certificate of a revoked agent", func(a *store.Agent, now time.Time) { a.RevokedAt = now },
			func(time.Time) Registration { return Registration{Serial: "s-a"} }, ErrRevoked, nil},
		{"superseded certificate", nil,
			func(time.Time) Registration { return Registration{Serial: "s-stolen"} }, ErrSuperseded, nil},
		{"certificate changing a pinned label", func(a *store.Agent, _ time.Time) { a.PinnedLabels = labels.FromStrings("role", "db") },
			func(time.Time) Registration { return Registration{Serial: "s-a"} }, nil, new(*LabelConflictError)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clock := registrytest.NewClock()
			r := newTestRegistry(t, memory.New(), clock)
			now := clock.Now()
			stored := testAgent("a")
			stored.RegisteredAt = now.Add(-24 * time.Hour)
			stored.Maintenance = true
			if tt.prepare != nil {
				tt.prepare(stored, now)
			}
			mustPut(t, r, stored)

			reg := tt.reg(now)
			reg.Agent = testAgent("a") // labels role=web
			reg.Agent.CertSerial, reg.Agent.RegisteredAt = "s-new", now
			err := r.Register(context.Background(), reg)
			switch {
			case tt.wantAs != nil:
				var lc *LabelConflictError
				if !errors.As(err, &lc) {
					t.Fatalf("Register = %v, want a *LabelConflictError", err)
				}
			case !errorIs(err, tt.want):
				t.Fatalf("Register = %v, want %v", err, tt.want)
			}
			v, _ := r.Get("a")
			if err != nil {
				if v.CertSerial != stored.CertSerial {
					t.Errorf("refused registration stored serial %q", v.CertSerial)
				}
				return
			}
			if v.CertSerial != "s-new" || v.Revoked() || !v.Maintenance || !v.RegisteredAt.Equal(stored.RegisteredAt) {
				t.Errorf("registered: serial %q revoked %v maintenance %v registered %v; want the new serial, not revoked, maintenance and first registration kept",
					v.CertSerial, v.Revoked(), v.Maintenance, v.RegisteredAt)
			}
		})
	}
}

// TestRegistry_RenewRules: a renewal stores the new certificate and keeps
// the previous one, refuses a certificate that is not the agent's and a
// proof of possession with another key, and signs again when the hostname
// changed between the read and the write.
func TestRegistry_RenewRules(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(a *store.Agent)
		req     Renewal
		want    error
	}{
		{"over mTLS", nil, Renewal{ID: "a", Serial: "s-a", KeyFingerprint: "other"}, nil},
		{"proof with the enrolled key", nil, Renewal{ID: "a", Serial: "s-a", KeyFingerprint: "fp", ProofOfPossession: true}, nil},
		{"proof with another key", nil, Renewal{ID: "a", Serial: "s-a", KeyFingerprint: "other", ProofOfPossession: true}, ErrKeyMismatch},
		{"superseded certificate", nil, Renewal{ID: "a", Serial: "s-stolen", KeyFingerprint: "fp"}, ErrSuperseded},
		{"revoked", func(a *store.Agent) { a.RevokedAt = time.Now() }, Renewal{ID: "a", Serial: "s-a", KeyFingerprint: "fp"}, ErrRevoked},
		{"deregistered", func(a *store.Agent) { a.Deregistered = true }, Renewal{ID: "a", Serial: "s-a", KeyFingerprint: "fp"}, ErrDeregistered},
		{"unknown", nil, Renewal{ID: "b", Serial: "s-b", KeyFingerprint: "fp"}, store.ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newTestRegistry(t, memory.New(), registrytest.NewClock())
			a := testAgent("a")
			a.KeyFingerprint = "fp"
			if tt.prepare != nil {
				tt.prepare(a)
			}
			mustPut(t, r, a)
			signed := 0
			err := r.Renew(context.Background(), tt.req, func(template *store.Agent) error {
				signed++
				template.CertSerial, template.KeyFingerprint = "s-renewed", tt.req.KeyFingerprint
				return nil
			})
			if !errorIs(err, tt.want) {
				t.Fatalf("Renew = %v, want %v", err, tt.want)
			}
			v, _ := r.Get("a")
			if err != nil {
				if v.CertSerial != "s-a" {
					t.Errorf("refused renewal stored serial %q", v.CertSerial)
				}
				return
			}
			if signed != 1 || v.CertSerial != "s-renewed" || v.PrevCertSerial != "s-a" || v.KeyFingerprint != tt.req.KeyFingerprint {
				t.Errorf("renewed: signed %d times, serial %q, previous %q, key %q", signed, v.CertSerial, v.PrevCertSerial, v.KeyFingerprint)
			}
		})
	}

	t.Run("hostname changed while signing", func(t *testing.T) {
		r := newTestRegistry(t, memory.New(), registrytest.NewClock())
		mustPut(t, r, testAgent("a"))
		var signedFor []string
		err := r.Renew(context.Background(), Renewal{ID: "a", Serial: "s-a"}, func(template *store.Agent) error {
			signedFor = append(signedFor, template.Hostname)
			if len(signedFor) == 1 {
				renamed := testAgent("a")
				renamed.Hostname = "renamed.example.com"
				mustPut(t, r, renamed)
			}
			template.CertSerial = "s-renewed"
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		if len(signedFor) != 2 || signedFor[1] != "renamed.example.com" {
			t.Errorf("signed for %q, want the old hostname, then the new one", signedFor)
		}
	})
}

// TestRegistry_OperatorChanges: revocation and maintenance name an agent
// the registry must have, and a revoked agent cannot be put in maintenance.
func TestRegistry_OperatorChanges(t *testing.T) {
	ctx := context.Background()
	r := newTestRegistry(t, memory.New(), registrytest.NewClock())
	mustPut(t, r, testAgent("a"))
	if _, err := r.Revoke(ctx, "nobody"); !errors.Is(err, ErrUnknownAgent) {
		t.Errorf("Revoke(unknown) = %v, want ErrUnknownAgent", err)
	}
	if _, err := r.SetMaintenance(ctx, "nobody", true); !errors.Is(err, ErrUnknownAgent) {
		t.Errorf("SetMaintenance(unknown) = %v, want ErrUnknownAgent", err)
	}
	if v, err := r.SetMaintenance(ctx, "a", true); err != nil || !v.Maintenance {
		t.Fatalf("SetMaintenance = %+v, %v", v, err)
	}
	v, err := r.Revoke(ctx, "a")
	if err != nil || !v.Revoked() {
		t.Fatalf("Revoke = %+v, %v", v, err)
	}
	again, err := r.Revoke(ctx, "a")
	if err != nil || !again.RevokedAt.Equal(v.RevokedAt) {
		t.Errorf("second Revoke moved the revocation time: %v, %v", again.RevokedAt, err)
	}
	var conflict *ConflictError
	if _, err := r.SetMaintenance(ctx, "a", false); !errors.As(err, &conflict) || err.Error() != "agent is revoked" {
		t.Errorf("SetMaintenance(revoked) = %v, want a *ConflictError", err)
	}
}

// hourRenewer returns a function that renews agent "a" over mTLS with the
// certificate serial and records the certificate issued, valid for an hour.
func hourRenewer(r *Registry, clock *registrytest.Clock) func(serial, issued string) error {
	return func(serial, issued string) error {
		return r.Renew(context.Background(), Renewal{ID: "a", Serial: serial}, func(template *store.Agent) error {
			template.CertSerial, template.CertNotAfter = issued, clock.Now().Add(time.Hour)
			return nil
		})
	}
}

// TestRegistry_RenewalsWithLostAnswers: an agent whose renewal answers are
// lost asks again with the certificate it holds. However often that
// happens, that certificate keeps speaking for the agent until it expires,
// and the certificate of the last answer it does receive replaces it. (The
// one-hour chaos run locked an agent out: each renewal had made the
// certificate of the lost answer the previous one.)
func TestRegistry_RenewalsWithLostAnswers(t *testing.T) {
	clock := registrytest.NewClock()
	r := newTestRegistry(t, memory.New(), clock)
	a := testAgent("a")
	a.CertNotAfter = clock.Now().Add(time.Hour)
	mustPut(t, r, a)
	held := a.CertSerial
	renew := hourRenewer(r, clock)
	for i := range 3 {
		if err := renew(held, fmt.Sprintf("s-lost-%d", i)); err != nil {
			t.Fatalf("renewal %d with the held certificate: %v", i, err)
		}
		if err := r.Heartbeat("a", held, "", nil); err != nil {
			t.Fatalf("after %d lost answers the held certificate is refused: %v", i+1, err)
		}
	}
	// A certificate that was signed but never delivered, and is not the
	// newest, speaks for nobody.
	if err := r.Heartbeat("a", "s-lost-0", "", nil); !errorIs(err, ErrSuperseded) {
		t.Errorf("heartbeat with an undelivered older certificate = %v, want ErrSuperseded", err)
	}
	// The answer that does arrive: its certificate works, and the held
	// one stays valid as the previous one until it expires.
	if err := renew(held, "s-delivered"); err != nil {
		t.Fatal(err)
	}
	for _, serial := range []string{"s-delivered", held} {
		if err := r.Heartbeat("a", serial, "", nil); err != nil {
			t.Errorf("heartbeat with %s: %v", serial, err)
		}
	}
	// Once the agent renews with the delivered certificate, the one it held
	// before becomes the previous-but-one and is refused.
	if err := renew("s-delivered", "s-next"); err != nil {
		t.Fatal(err)
	}
	if err := r.Heartbeat("a", held, "", nil); !errorIs(err, ErrSuperseded) {
		t.Errorf("heartbeat with the certificate before the delivered one = %v, want ErrSuperseded", err)
	}
}

// TestRegistry_RenewalAfterLostAnswerAndExpiry: a renewal was carried out
// but its answer lost, and the certificate the agent holds (now the
// previous one) expires before a retry gets through. Proving possession of
// the key of the current certificate, which the agent never received, it
// renews with the expired one instead of being refused as superseded (the
// one-hour chaos run sent four agents to their enrollment tokens and new
// agent ids this way). Hostile variants stay refused: another key, a
// certificate older than the previous one, and mTLS instead of the proof.
func TestRegistry_RenewalAfterLostAnswerAndExpiry(t *testing.T) {
	tests := []struct {
		name string
		req  func(held string) Renewal
		want error
	}{
		{"held certificate, proof with the agent's key", func(held string) Renewal {
			return Renewal{ID: "a", Serial: held, KeyFingerprint: "fp", ProofOfPossession: true}
		}, nil},
		{"held certificate, proof with another key", func(held string) Renewal {
			return Renewal{ID: "a", Serial: held, KeyFingerprint: "other", ProofOfPossession: true}
		}, ErrSuperseded},
		{"held certificate without a proof of possession", func(held string) Renewal {
			return Renewal{ID: "a", Serial: held, KeyFingerprint: "fp"}
		}, ErrSuperseded},
		{"a certificate before the held one", func(string) Renewal {
			return Renewal{ID: "a", Serial: "s-older", KeyFingerprint: "fp", ProofOfPossession: true}
		}, ErrSuperseded},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			clock := registrytest.NewClock()
			r := newTestRegistry(t, memory.New(), clock)
			a := testAgent("a")
			a.KeyFingerprint = "fp"
			a.CertNotAfter = clock.Now().Add(45 * time.Second)
			a.PrevCertSerial, a.PrevCertNotAfter = "s-older", clock.Now().Add(15*time.Second)
			mustPut(t, r, a)
			held := a.CertSerial
			renew := func(req Renewal, issued string) error {
				return r.Renew(ctx, req, func(template *store.Agent) error {
					template.CertSerial, template.CertNotAfter, template.KeyFingerprint = issued, clock.Now().Add(45*time.Second), "fp"
					return nil
				})
			}
			// Carried out, answer lost.
			if err := renew(Renewal{ID: "a", Serial: held, KeyFingerprint: "fp"}, "s-lost"); err != nil {
				t.Fatal(err)
			}
			clock.Advance(time.Minute) // the held certificate expired meanwhile
			err := renew(tt.req(held), "s-new")
			if !errorIs(err, tt.want) {
				t.Fatalf("Renew = %v, want %v", err, tt.want)
			}
			if err != nil {
				return
			}
			if err := r.Heartbeat("a", "s-new", "", nil); err != nil {
				t.Errorf("heartbeat with the renewed certificate: %v", err)
			}
			if err := r.Heartbeat("a", "s-lost", "", nil); !errorIs(err, ErrSuperseded) {
				t.Errorf("heartbeat with the undelivered certificate = %v, want ErrSuperseded", err)
			}
		})
	}
}

// TestRegistry_RenewalCountsAsHeartbeat: the agent schedules its next
// heartbeat one interval after a renewal, so the renewal must keep it in
// http_sd as a heartbeat would, on this replica and, through the stored
// record, on the others. (A chaos run lost an agent's targets: its
// heartbeats were held up by a lossy network, its first request to get
// through was a renewal, and it expired six seconds later, before its next
// heartbeat.)
func TestRegistry_RenewalCountsAsHeartbeat(t *testing.T) {
	// TTL 1m, heartbeat interval 15s (newTestRegistry).
	tests := []struct {
		name string
		// silent is how long the agent was not heard of before it renews.
		silent time.Duration
		req    Renewal
	}{
		{"over mTLS, before the TTL runs out", 50 * time.Second, Renewal{ID: "a", Serial: "s-a", KeyFingerprint: "fp"}},
		{"expired certificate, after the agent expired", 90 * time.Second, Renewal{ID: "a", Serial: "s-a", KeyFingerprint: "fp", ProofOfPossession: true}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			clock := registrytest.NewClock()
			st := memory.New()
			r := newTestRegistry(t, st, clock)
			a := testAgent("a")
			a.KeyFingerprint = "fp"
			a.CertNotAfter = clock.Now().Add(time.Hour)
			mustPut(t, r, a)
			clock.Advance(tt.silent)
			r.Sweep(ctx)
			renewedAt := clock.Now()
			if err := r.Renew(ctx, tt.req, func(template *store.Agent) error {
				template.CertSerial, template.CertNotAfter, template.KeyFingerprint = "s-renewed", clock.Now().Add(time.Hour), "fp"
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if !r.listed("a") {
				t.Errorf("not in http_sd right after the renewal")
			}
			// Just before the next heartbeat is due, and past the TTL
			// counted from the last heartbeat.
			clock.Advance(15 * time.Second)
			r.Sweep(ctx)
			if v, _ := r.Get("a"); v.State != discovery.StateHealthy || !r.listed("a") {
				t.Errorf("one interval after the renewal: state %s, in http_sd %v; want healthy and listed", v.State, r.listed("a"))
			}
			stored, err := st.List(ctx)
			if err != nil || len(stored) != 1 {
				t.Fatalf("List = %d agents, %v", len(stored), err)
			}
			if !stored[0].LastSeen.Equal(renewedAt) {
				t.Errorf("stored LastSeen %v, want the renewal's %v: other replicas would expire the agent", stored[0].LastSeen, renewedAt)
			}
		})
	}
}

// TestRegistry_RenewalWithAStolenPreviousCertificate plays a thief holding
// the agent's previous certificate (and its key), still within its
// validity. Its renewal is taken for a retry after a lost answer: the
// thief gets the current certificate and the agent's own one is dropped,
// so the agent is refused (superseded) and the theft shows, instead of two
// holders running side by side. Revoking the agent then shuts out every
// certificate involved.
func TestRegistry_RenewalWithAStolenPreviousCertificate(t *testing.T) {
	clock := registrytest.NewClock()
	r := newTestRegistry(t, memory.New(), clock)
	a := testAgent("a")
	a.CertNotAfter = clock.Now().Add(time.Hour)
	mustPut(t, r, a)
	stolen := a.CertSerial
	renew := hourRenewer(r, clock)
	if err := renew(stolen, "s-agent"); err != nil { // the agent's own renewal, delivered
		t.Fatal(err)
	}
	if err := renew(stolen, "s-thief"); err != nil {
		t.Fatalf("renewal with the previous certificate: %v", err)
	}
	if err := r.Heartbeat("a", "s-agent", "", nil); !errorIs(err, ErrSuperseded) {
		t.Errorf("the agent's own certificate after the thief's renewal: %v, want ErrSuperseded", err)
	}
	if _, err := r.Revoke(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	for _, serial := range []string{stolen, "s-thief", "s-agent"} {
		if err := r.Heartbeat("a", serial, "", nil); !errorIs(err, ErrRevoked) {
			t.Errorf("heartbeat with %s after revocation: %v, want ErrRevoked", serial, err)
		}
		if err := renew(serial, "s-more"); !errorIs(err, ErrRevoked) {
			t.Errorf("renewal with %s after revocation: %v, want ErrRevoked", serial, err)
		}
	}
}
