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
	"crypto/x509"
	"fmt"
	"net/http"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

// signedCert is a certificate signed for an agent, not yet stored.
type signedCert struct {
	leaf  *x509.Certificate
	chain []byte
}

// sign signs a certificate for the agent's id, hostname and address and
// records it in agent (serial, expiry, key fingerprint). Signing comes
// before the store write, which may have to be repeated, and costs nothing
// but CPU if the write then refuses.
func (a *API) sign(agent *store.Agent, pub any) (*signedCert, error) {
	fp, err := ca.KeyFingerprint(pub)
	if err != nil {
		return nil, &apiError{http.StatusBadRequest, "bad_key", "csr: " + err.Error()}
	}
	leaf, chain, err := a.cfg.CA.SignAgent(ca.AgentCertRequest{
		AgentID:   agent.ID,
		Hostname:  agent.Hostname,
		Address:   agent.Address,
		PublicKey: pub,
		TTL:       a.cfg.CertTTL,
	})
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %q: %w", agent.ID, err)
	}
	agent.CertSerial = serialHex(leaf)
	agent.CertNotAfter = leaf.NotAfter
	agent.KeyFingerprint = fp
	agent.RevokedAt = time.Time{}
	return &signedCert{leaf: leaf, chain: chain}, nil
}

// issued counts a certificate handed out.
func (a *API) issued(reason string) {
	if a.cfg.Metrics != nil {
		a.cfg.Metrics.CertificatesIssued.WithLabelValues(reason).Inc()
	}
}

func (a *API) certificateResponse(id string, leaf *x509.Certificate, chain []byte) *protocol.CertificateResponse {
	cfg := a.cfg.Registry.Config()
	life := leaf.NotAfter.Sub(leaf.NotBefore)
	return &protocol.CertificateResponse{
		AgentID:                  id,
		Certificate:              string(chain),
		CACertificate:            string(legacyCABundle(a.cfg.CA)),
		AgentCACertificate:       string(a.cfg.CA.AgentCACertificatePEM()),
		ClientCACertificate:      string(a.cfg.CA.ClientCACertificatePEM()),
		TTLSeconds:               int(cfg.TTL / time.Second),
		HeartbeatIntervalSeconds: int(cfg.HeartbeatInterval / time.Second),
		RenewAfter:               leaf.NotBefore.Add(life * 2 / 3).UTC(),
	}
}

// legacyCABundle is the ca_certificate of a certificate response. Agents
// of 0.1.0 verify their new certificate against it and make it their
// relay's client CA, so it holds the client CA and the agent CA; the
// relay's role check still refuses agent certificates.
func legacyCABundle(authority *ca.Authority) []byte {
	return append(append([]byte(nil), authority.ClientCACertificatePEM()...), authority.AgentCACertificatePEM()...)
}

// expiredIdentity authenticates a renewal without mTLS: the old certificate
// must be ours, an agent's, expired no longer than the grace window, and the
// CSR must be signed by the key it certifies.
func (a *API) expiredIdentity(certPEM string, csr *x509.CertificateRequest) (*identity, error) {
	if certPEM == "" {
		return nil, a.auth.reject(&apiError{http.StatusUnauthorized, "no_certificate", "a client certificate is required, or the expired certificate in the body"})
	}
	old, err := ca.ParseCertificatePEM([]byte(certPEM))
	if err != nil {
		return nil, &apiError{http.StatusBadRequest, "bad_certificate", "certificate: " + err.Error()}
	}
	client, err := a.cfg.CA.VerifyIgnoringExpiry(old)
	if err != nil {
		return nil, a.auth.reject(&apiError{http.StatusUnauthorized, "bad_certificate", "certificate not issued to an agent by this CA"})
	}
	now := a.cfg.Now()
	if now.Before(old.NotAfter) {
		return nil, a.auth.reject(&apiError{http.StatusBadRequest, "not_expired", "certificate is still valid: renew over mTLS"})
	}
	if now.Sub(old.NotAfter) > a.cfg.RenewGrace {
		return nil, a.auth.reject(&apiError{http.StatusUnauthorized, "grace_expired",
			fmt.Sprintf("certificate expired more than %s ago: enroll again with a new token", a.cfg.RenewGrace)})
	}
	oldFP, err := ca.KeyFingerprint(old.PublicKey)
	if err != nil {
		return nil, &apiError{http.StatusBadRequest, "bad_certificate", "certificate: " + err.Error()}
	}
	if fp, _ := ca.KeyFingerprint(csr.PublicKey); fp != oldFP {
		return nil, a.auth.reject(&apiError{http.StatusForbidden, "key_mismatch", "csr is not signed by the certificate's key"})
	}
	return &identity{role: ca.RoleAgent, id: client.ID, serial: serialHex(old), hostname: certHostname(old)}, nil
}
