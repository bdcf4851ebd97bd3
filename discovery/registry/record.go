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
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// Record is an agent as the registry keeps it in memory: the stored Agent
// without what the entry holds itself (LastSeen, Status), with times as Unix
// nanoseconds and a two-byte port. It is 192 bytes where an Agent is 304 (a
// time.Time alone is 24), which is about 11 MiB at 100,000 agents. Records are
// immutable: a change installs a new one.
type Record struct {
	ID, Hostname, Address      string
	CertSerial, PrevCertSerial string
	KeyFingerprint             string
	Labels, PinnedLabels       labels.Labels
	Exporters                  []protocol.Exporter
	// Unix nanoseconds; 0 stands for the zero time.
	certNotAfter, prevCertNotAfter, registeredAt, revokedAt int64
	Port                                                    uint16
	Maintenance, Deregistered, Tunnel                       bool
}

// newRecord makes the in-memory record of a stored agent. It shares a's
// labels and exporter list, which are never modified.
func newRecord(a *store.Agent) *Record {
	return &Record{
		ID:               a.ID,
		Hostname:         a.Hostname,
		Address:          a.Address,
		CertSerial:       a.CertSerial,
		PrevCertSerial:   a.PrevCertSerial,
		KeyFingerprint:   a.KeyFingerprint,
		Labels:           a.Labels,
		PinnedLabels:     a.PinnedLabels,
		Exporters:        a.Exporters,
		certNotAfter:     unixNanos(a.CertNotAfter),
		prevCertNotAfter: unixNanos(a.PrevCertNotAfter),
		registeredAt:     unixNanos(a.RegisteredAt),
		revokedAt:        unixNanos(a.RevokedAt),
		// Validation keeps ports in 1-65535.
		Port:         uint16(a.Port),
		Maintenance:  a.Maintenance,
		Deregistered: a.Deregistered,
		Tunnel:       a.Tunnel,
	}
}

// agent returns the record as an Agent of its own (LastSeen and Status are
// the entry's to fill in).
func (r *Record) agent() *store.Agent {
	a := &store.Agent{
		ID:               r.ID,
		Hostname:         r.Hostname,
		Address:          r.Address,
		Port:             int(r.Port),
		Labels:           r.Labels,
		PinnedLabels:     r.PinnedLabels,
		CertSerial:       r.CertSerial,
		CertNotAfter:     fromUnixNanos(r.certNotAfter),
		PrevCertSerial:   r.PrevCertSerial,
		PrevCertNotAfter: fromUnixNanos(r.prevCertNotAfter),
		KeyFingerprint:   r.KeyFingerprint,
		RegisteredAt:     fromUnixNanos(r.registeredAt),
		Maintenance:      r.Maintenance,
		RevokedAt:        fromUnixNanos(r.revokedAt),
		Deregistered:     r.Deregistered,
		Tunnel:           r.Tunnel,
	}
	if r.Exporters != nil {
		a.Exporters = append([]protocol.Exporter(nil), r.Exporters...)
	}
	return a
}

// revoked reports whether an operator revoked the agent.
func (r *Record) revoked() bool { return r.revokedAt != 0 }

// checkActive is checkActive on a record.
func (r *Record) checkActive(serial string, now time.Time) error {
	if err := r.checkSerial(serial, now); err != nil {
		return err
	}
	if r.Deregistered {
		return ErrDeregistered
	}
	return nil
}

// checkActive decides whether a certificate may act for a registered agent
// (heartbeat, renew, deregister): checkSerial, and the agent has not
// deregistered itself. Registering again only needs checkSerial.
func checkActive(a *store.Agent, serial string, now time.Time) error {
	if err := checkSerial(a, serial, now); err != nil {
		return err
	}
	if a.Deregistered {
		return ErrDeregistered
	}
	return nil
}

// checkSerial is checkSerial on a record.
func (r *Record) checkSerial(serial string, now time.Time) error {
	return serialAllowed(r.revoked(), r.CertSerial, r.PrevCertSerial, r.prevCertNotAfter, serial, now)
}

// checkSerial decides whether a certificate may still speak for an agent.
func checkSerial(a *store.Agent, serial string, now time.Time) error {
	return serialAllowed(a.Revoked(), a.CertSerial, a.PrevCertSerial, unixNanos(a.PrevCertNotAfter), serial, now)
}

// serialAllowed: the current certificate speaks for the agent, the previous
// one until it expires (connections opened before a renewal keep working),
// no certificate of a revoked agent does.
func serialAllowed(revoked bool, current, previous string, previousNotAfter int64, serial string, now time.Time) error {
	if revoked {
		return ErrRevoked
	}
	if serial == current {
		return nil
	}
	if serial == previous && now.UnixNano() < previousNotAfter {
		return nil
	}
	return ErrSuperseded
}

func unixNanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
