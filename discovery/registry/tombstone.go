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
	"fmt"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// Deregister is an agent's own deregistration, by the certificate with
// serial: the agent leaves http_sd at once, but its record stays as a
// tombstone (discovery.StateDeregistered) with everything the agent may not change
// itself: pinned labels, maintenance, certificate serials and revocation.
// Deleting the record instead would let the same certificate register again
// without its pins and out of maintenance, and would leave an operator
// nothing to revoke. Sweep purges the tombstone once the agent's last
// certificate is past the renewal grace window.
//
// It returns ErrNotFound when there is no record, ErrDeregistered when it is
// a tombstone already, and ErrRevoked or ErrSuperseded when the certificate
// may not act for the agent. The decision is made on the stored record: a
// certificate that another replica revoked a moment ago must not deregister.
func (r *Registry) Deregister(ctx context.Context, id, serial string) error {
	now := r.cfg.Now()
	_, err := r.Modify(ctx, id, nil, func(cur *store.Agent) (*store.Agent, error) {
		if cur == nil {
			return nil, store.ErrNotFound
		}
		if err := checkActive(cur, serial, now); err != nil {
			return nil, err
		}
		cur.Deregistered = true
		cur.LastSeen = now
		return cur, nil
	})
	if err != nil {
		return fmt.Errorf("deregister agent %q: %w", id, err)
	}
	return nil
}

// retire is what becomes of a record that Sweep found past its retention:
// nothing, or, for an agent that expired while a certificate of it can still
// register (over mTLS, or by proof of its key within the renewal grace
// window), a tombstone. Purging it would let a host shed its pinned labels,
// maintenance and a revocation to come by going silent for a day instead of
// deregistering.
func (r *Registry) retire(cur *store.Agent, now time.Time) *store.Agent {
	if cur.Deregistered || cur.Revoked() {
		return nil
	}
	if r.pastRenewGrace(unixNanos(cur.CertNotAfter), unixNanos(cur.PrevCertNotAfter), now) {
		return nil
	}
	cur.Deregistered = true
	return cur
}

// pastRenewGrace reports whether neither of an agent's certificates (their
// expiries in Unix nanoseconds) can register any more, over mTLS or by
// proof of its key within the renewal grace window.
func (r *Registry) pastRenewGrace(certNotAfter, prevCertNotAfter int64, now time.Time) bool {
	last := max(certNotAfter, prevCertNotAfter)
	return now.Sub(time.Unix(0, last)) > r.cfg.RenewGrace
}
