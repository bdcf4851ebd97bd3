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
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// The enrollment, renewal and deregistration rules. Each is decided on the
// stored record inside one read-modify-write (Modify), never on this
// replica's copy, which may lag behind another replica's change.

// Refusals of the rules below, besides ErrRevoked, ErrSuperseded,
// ErrDeregistered and the store's ErrNotFound and ErrTokenUsed.
var (
	// ErrTokenBeforeRevocation refuses an enrollment token issued before
	// the agent it names was revoked: a token made after the revocation
	// re-admits the agent, an older one must not undo the operator's
	// decision.
	ErrTokenBeforeRevocation = errors.New("token issued before the agent was revoked")
	// ErrKeyMismatch refuses a renewal by proof of possession with another
	// key than the one the agent enrolled with.
	ErrKeyMismatch = errors.New("csr key is not the key the agent enrolled with")
	// ErrUnknownAgent is an operator naming an agent the registry does not
	// have.
	ErrUnknownAgent = errors.New("no such agent")
)

// LabelConflictError refuses a registration that asks for another value of
// a label its enrollment token pinned.
type LabelConflictError struct {
	Name, Value string
}

func (e *LabelConflictError) Error() string {
	return fmt.Sprintf("label %q must be %q for this agent's enrollment token", e.Name, e.Value)
}

// ConflictError refuses an operator's change that the agent's state does
// not allow.
type ConflictError struct {
	State discovery.AgentState
}

func (e *ConflictError) Error() string { return "agent is " + string(e.State) }

// PinLabels sets the labels an enrollment token fixed, refusing with a
// *LabelConflictError a request that asks for other values, and records
// them so that later re-registrations by certificate keep them.
func PinLabels(agent *store.Agent, pinned labels.Labels) error {
	if pinned.IsEmpty() {
		return nil
	}
	var err error
	pinned.Range(func(l labels.Label) {
		if err == nil && agent.Labels.Has(l.Name) && agent.Labels.Get(l.Name) != l.Value {
			err = &LabelConflictError{Name: l.Name, Value: l.Value}
		}
	})
	if err != nil {
		return err
	}
	// Not labels.Builder: it drops labels with empty values, which agents
	// may register.
	merged := agent.Labels.Map()
	pinned.Range(func(l labels.Label) { merged[l.Name] = l.Value })
	agent.Labels = labels.FromMap(merged)
	agent.PinnedLabels = pinned
	return nil
}

// Registration is an agent asking to be listed, with its certificate
// already signed into Agent.
type Registration struct {
	Agent *store.Agent
	// Token is the enrollment token the agent came with; nil for a
	// re-registration by certificate.
	Token *TokenGrant
	// Serial is the certificate a re-registration by certificate came with.
	Serial string
}

// TokenGrant is what an enrollment token grants a registration.
type TokenGrant struct {
	// IssuedAt is when the token was made; zero when it does not say.
	IssuedAt time.Time
	// Claim, if set, uses up a single-use token with the write.
	Claim *store.TokenClaim
}

// Register stores a registration. An agent the store does not know is
// added. A known one is replaced, keeping when it first registered and its
// maintenance flag, unless:
//   - with a token, the agent was revoked after the token was made
//     (ErrTokenBeforeRevocation), or the single-use token was used
//     (store.ErrTokenUsed);
//   - by certificate, the certificate is no longer the agent's (ErrRevoked,
//     ErrSuperseded), or the request changes a label the enrollment token
//     pinned (*LabelConflictError): the pinned labels stay, or a host could
//     leave the group its token put it in.
//
// With a single-use token, the registration and the token's use are one
// write: a registration that fails leaves the token usable for the retry.
func (r *Registry) Register(ctx context.Context, reg Registration) error {
	now := r.cfg.Now()
	var claim *store.TokenClaim
	if reg.Token != nil {
		claim = reg.Token.Claim
	}
	_, err := r.Modify(ctx, reg.Agent.ID, claim, func(cur *store.Agent) (*store.Agent, error) {
		next := reg.Agent.Clone()
		if cur == nil {
			return next, nil
		}
		if reg.Token != nil {
			if cur.Revoked() && !reg.Token.IssuedAt.After(cur.RevokedAt) {
				return nil, ErrTokenBeforeRevocation
			}
		} else {
			if err := checkSerial(cur, reg.Serial, now); err != nil {
				return nil, err
			}
			if err := PinLabels(next, cur.PinnedLabels); err != nil {
				return nil, err
			}
		}
		next.RegisteredAt = cur.RegisteredAt
		next.Maintenance = cur.Maintenance
		return next, nil
	})
	return err
}

// Renewal is an agent asking for a new certificate.
type Renewal struct {
	// ID and Serial name the agent and the certificate that asks.
	ID, Serial string
	// KeyFingerprint is the key of the new certificate. With
	// ProofOfPossession (a renewal by an expired certificate and a CSR
	// signed by its key, without mTLS) it must be the key the agent
	// enrolled with (ErrKeyMismatch).
	KeyFingerprint    string
	ProofOfPossession bool
}

// Sign signs a certificate for the id, hostname and address of template
// and records it there: CertSerial, CertNotAfter and KeyFingerprint.
type Sign func(template *store.Agent) error

// renewAttempts bounds how often Renew signs again because a
// re-registration changed the hostname or address in between.
const renewAttempts = 3

// Renew replaces the agent's certificate by one sign makes for the
// record's hostname and address; the previous one keeps speaking for the
// agent until it expires. The certificate must be the agent's (ErrRevoked,
// ErrSuperseded, ErrDeregistered, store.ErrNotFound). Memory answers the
// common refusals before anything is signed; the stored record has the
// final word. Signing comes before the write, which may have to be
// repeated, and costs nothing but CPU if the write then refuses.
//
// A renewal is the agent speaking for itself, so it counts as a heartbeat:
// the agent schedules its next heartbeat one interval after it. An agent
// whose heartbeats a degraded network had held up, and whose first request
// to get through is a renewal, would otherwise expire between the renewal
// and that heartbeat and leave http_sd on every replica. The time goes into
// the stored record, which carries it to the other replicas.
func (r *Registry) Renew(ctx context.Context, req Renewal, sign Sign) error {
	now := r.cfg.Now()
	view, ok := r.Get(req.ID)
	if !ok {
		return store.ErrNotFound
	}
	if err := checkRenewal(&view.Agent, req, now); err != nil {
		return err
	}
	signFor := view.Clone()
	for attempt := 1; ; attempt++ {
		template := &store.Agent{ID: req.ID, Hostname: signFor.Hostname, Address: signFor.Address}
		if err := sign(template); err != nil {
			return err
		}
		_, err := r.Modify(ctx, req.ID, nil, func(cur *store.Agent) (*store.Agent, error) {
			if cur == nil {
				return nil, store.ErrNotFound
			}
			if err := checkRenewal(cur, req, now); err != nil {
				return nil, err
			}
			if req.ProofOfPossession && cur.KeyFingerprint != "" && req.KeyFingerprint != cur.KeyFingerprint {
				return nil, ErrKeyMismatch
			}
			if cur.Hostname != template.Hostname || cur.Address != template.Address {
				return nil, &recordChanged{cur: cur.Clone()}
			}
			next := cur.Clone()
			// The certificate that asks stays valid as the previous one.
			// When that is already the previous one, the answer to an
			// earlier renewal was lost (a reset connection, a failover
			// that carried the request to a second replica): the current
			// certificate never reached the agent and is dropped. Keeping
			// it as the previous one instead would, after a second lost
			// answer, leave the agent holding a superseded certificate.
			if req.Serial != cur.PrevCertSerial {
				next.PrevCertSerial, next.PrevCertNotAfter = cur.CertSerial, cur.CertNotAfter
			}
			next.CertSerial, next.CertNotAfter, next.KeyFingerprint = template.CertSerial, template.CertNotAfter, template.KeyFingerprint
			if now.After(next.LastSeen) {
				next.LastSeen = now
			}
			return next, nil
		})
		var changed *recordChanged
		if errors.As(err, &changed) && attempt < renewAttempts {
			signFor = changed.cur
			continue
		}
		return err
	}
}

// checkRenewal decides whether the certificate of req may renew agent a:
// checkActive, and one more case. An agent whose renewal was carried out
// but whose answer was lost holds what is now the previous certificate;
// when that expires before a retry gets through (a network that resets
// or drops every request for longer than the certificate has left), the
// agent renews with it by proving possession of its key. That key is the
// key of the current certificate, which the agent never received, so the
// proof speaks for the agent as well as that certificate would: the
// renewal is allowed, instead of a refusal as superseded that sends the
// agent to its enrollment token and a new agent id. With another key (the
// lost renewal changed keys, or the agent enrolled again), it stays
// refused.
func checkRenewal(a *store.Agent, req Renewal, now time.Time) error {
	err := checkActive(a, req.Serial, now)
	if !errors.Is(err, ErrSuperseded) || !req.ProofOfPossession || req.Serial == "" || req.Serial != a.PrevCertSerial ||
		a.KeyFingerprint == "" || req.KeyFingerprint != a.KeyFingerprint {
		return err
	}
	if a.Deregistered {
		return ErrDeregistered
	}
	return nil
}

// recordChanged says that a record changed in a way that needs a new
// certificate; cur is the record as stored now.
type recordChanged struct{ cur *store.Agent }

func (e *recordChanged) Error() string { return "agent record changed during the renewal" }

// Revoke revokes an agent for good: none of its certificates speaks for it
// any more. Revoking a revoked agent changes nothing. It returns the agent
// as revoked, or ErrUnknownAgent.
func (r *Registry) Revoke(ctx context.Context, id string) (discovery.AgentView, error) {
	now := r.cfg.Now()
	return r.operatorUpdate(ctx, id, func(a *store.Agent) error {
		if !a.Revoked() {
			a.RevokedAt = now
		}
		return nil
	})
}

// SetMaintenance puts an agent in maintenance or takes it out. A revoked
// agent refuses with a *ConflictError.
func (r *Registry) SetMaintenance(ctx context.Context, id string, on bool) (discovery.AgentView, error) {
	return r.operatorUpdate(ctx, id, func(a *store.Agent) error {
		if a.Revoked() {
			return &ConflictError{State: discovery.StateRevoked}
		}
		a.Maintenance = on
		return nil
	})
}

// operatorUpdate applies an operator's change and returns the agent as it
// is now.
func (r *Registry) operatorUpdate(ctx context.Context, id string, mutate func(*store.Agent) error) (discovery.AgentView, error) {
	if _, err := r.Update(ctx, id, mutate); errors.Is(err, store.ErrNotFound) {
		return discovery.AgentView{}, ErrUnknownAgent
	} else if err != nil {
		return discovery.AgentView{}, err
	}
	v, _ := r.Get(id)
	return v, nil
}
