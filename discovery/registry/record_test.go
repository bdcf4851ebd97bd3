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
	"errors"
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// TestRecord_RoundTrip: an agent kept as a record comes back as it was
// stored, but for LastSeen and Status, which the entry holds.
func TestRecord_RoundTrip(t *testing.T) {
	at := time.Date(2026, 11, 25, 12, 0, 0, 123456789, time.FixedZone("CET", 3600))
	full := store.Agent{
		ID: "a1", Hostname: "h1.example.com", Address: "2001:db8::1", Port: 65535,
		Labels:           labels.FromStrings("role", "db", "empty", ""),
		PinnedLabels:     labels.FromStrings("role", "db"),
		Exporters:        []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
		CertSerial:       "abc",
		CertNotAfter:     at.Add(24 * time.Hour),
		PrevCertSerial:   "abb",
		PrevCertNotAfter: at.Add(time.Hour),
		KeyFingerprint:   "ff00",
		RegisteredAt:     at,
		Maintenance:      true,
		RevokedAt:        at.Add(2 * time.Hour),
		Deregistered:     true,
	}
	for _, a := range []store.Agent{full, {ID: "bare", Hostname: "h", Address: "10.0.0.1", Port: 1}} {
		t.Run(a.ID, func(t *testing.T) {
			got := newRecord(&a).agent()
			for _, tm := range []struct {
				name      string
				got, want time.Time
			}{
				{"CertNotAfter", got.CertNotAfter, a.CertNotAfter},
				{"PrevCertNotAfter", got.PrevCertNotAfter, a.PrevCertNotAfter},
				{"RegisteredAt", got.RegisteredAt, a.RegisteredAt},
				{"RevokedAt", got.RevokedAt, a.RevokedAt},
			} {
				if !tm.got.Equal(tm.want) || tm.got.IsZero() != tm.want.IsZero() {
					t.Errorf("%s %v, want %v", tm.name, tm.got, tm.want)
				}
			}
			// The rest compares exactly once the times are taken as equal.
			got.CertNotAfter, got.PrevCertNotAfter, got.RegisteredAt, got.RevokedAt = a.CertNotAfter, a.PrevCertNotAfter, a.RegisteredAt, a.RevokedAt
			if !reflect.DeepEqual(*got, a) {
				t.Errorf("round trip\n got %+v\nwant %+v", *got, a)
			}
			if got.Revoked() != a.Revoked() || newRecord(&a).revoked() != a.Revoked() {
				t.Error("revocation lost")
			}
		})
	}
}

// TestRecord_CheckSerial matches checkSerial on the Agent it came from.
func TestRecord_CheckSerial(t *testing.T) {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	a := &store.Agent{ID: "a", CertSerial: "new", PrevCertSerial: "old", PrevCertNotAfter: now.Add(time.Minute)}
	revoked := *a
	revoked.RevokedAt = now
	for _, tt := range []struct {
		agent  *store.Agent
		serial string
		at     time.Time
		want   error
	}{
		{a, "new", now, nil},
		{a, "old", now, nil},
		{a, "old", now.Add(time.Minute), ErrSuperseded},
		{a, "other", now, ErrSuperseded},
		{&revoked, "new", now, ErrRevoked},
	} {
		if got := newRecord(tt.agent).checkSerial(tt.serial, tt.at); !errors.Is(got, tt.want) {
			t.Errorf("Record: serial %q at %v: %v, want %v", tt.serial, tt.at, got, tt.want)
		}
		if got := checkSerial(tt.agent, tt.serial, tt.at); !errors.Is(got, tt.want) {
			t.Errorf("agent: serial %q at %v: %v, want %v", tt.serial, tt.at, got, tt.want)
		}
	}
}

// TestRecord_Size keeps the record in its allocation size class; a field
// added without thought would cost 100,000 agents another class step.
func TestRecord_Size(t *testing.T) {
	if size := unsafe.Sizeof(Record{}); size > 192 {
		t.Errorf("Record is %d bytes, want at most 192", size)
	}
}
