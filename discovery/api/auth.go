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
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/collector"
)

// maxAuthorizationHeader bounds the Authorization header we look at.
const maxAuthorizationHeader = 8 << 10

// identity is who a request speaks for.
type identity struct {
	role ca.Role
	// id is the agent id of an agent certificate, the name of a client
	// certificate or the jti of a token.
	id     string
	serial string // hex serial of a client certificate
	// hostname is the host an agent certificate was issued to (its first
	// DNS name); re-registration by certificate cannot change it.
	hostname string
	// legacy marks an agent certificate that a 0.1.0 server signed
	// directly with the server CA.
	legacy bool
	claims *ca.Claims
}

// authenticator decides who a request comes from. Certificates must have
// been verified by the TLS layer against our CA; tokens are verified here.
type authenticator struct {
	ca      *ca.Authority
	tokens  *ca.Tokens
	metrics *collector.Server
	now     func() time.Time
}

// certificate returns the request's client certificate if it presented one
// that chains to our CAs through an issuer allowed to issue its role (see
// ca.Authority.VerifiedClient). A certificate the TLS layer did not verify
// is an error, not "no certificate": it means the web config does not
// verify client certificates against our CAs, and silently ignoring it
// would be confusing.
func (a *authenticator) certificate(r *http.Request) (*ca.Client, error) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return nil, nil
	}
	c, err := a.ca.VerifiedClient(r.TLS.VerifiedChains)
	if err == nil {
		return c, nil
	}
	status := ca.ClientRefusalStatus(err)
	if status == http.StatusForbidden {
		return nil, a.reject(&apiError{status, "wrong_issuer", err.Error()})
	}
	return nil, a.reject(&apiError{status, "unverified_certificate",
		"client certificate not verified against the baremetal_sd CAs (web config needs client_auth_type VerifyClientCertIfGiven and client_ca_file pointing at the data directory's " + ca.ClientCAsFile + ")"})
}

func (a *authenticator) reject(e *apiError) *apiError {
	a.countCert(e.reason)
	return e
}

// countCert counts a refused client certificate.
func (a *authenticator) countCert(reason string) {
	if a.metrics != nil {
		a.metrics.CertRejections.WithLabelValues(reason).Inc()
	}
}

// agent authenticates an agent by its certificate.
func (a *authenticator) agent(r *http.Request) (*identity, error) {
	cert, err := a.certificate(r)
	if err != nil {
		return nil, err
	}
	if cert == nil {
		return nil, a.reject(&apiError{http.StatusUnauthorized, "no_certificate", "an agent client certificate is required"})
	}
	if cert.Role != ca.RoleAgent {
		return nil, a.reject(&apiError{http.StatusForbidden, "not_agent", fmt.Sprintf("a certificate of role %q cannot act as an agent", cert.Role)})
	}
	return &identity{role: cert.Role, id: cert.ID, serial: serialHex(cert.Leaf), hostname: certHostname(cert.Leaf), legacy: a.ca.IsLegacy(cert.Leaf)}, nil
}

// certHostname is the hostname an agent certificate was issued to: the
// signer puts it first among the DNS names.
func certHostname(cert *x509.Certificate) string {
	if len(cert.DNSNames) == 0 {
		return ""
	}
	return cert.DNSNames[0]
}

// token verifies the request's bearer token for a scope.
func (a *authenticator) token(r *http.Request, want ca.Scope) (*identity, error) {
	raw, ok := bearer(r)
	if !ok {
		return nil, a.rejectToken("missing", "a bearer token is required")
	}
	claims, err := a.tokens.Verify(raw, want, a.now())
	if err != nil {
		reason := "invalid"
		var te *ca.TokenError
		if errors.As(err, &te) {
			reason = te.Reason
		}
		status := http.StatusUnauthorized
		if reason == "scope" {
			status = http.StatusForbidden
		}
		e := a.rejectToken(reason, "token refused: "+err.Error())
		e.status = status
		return nil, e
	}
	return &identity{role: scopeRole(claims.Scope), id: claims.ID, claims: claims}, nil
}

func (a *authenticator) rejectToken(reason, msg string) *apiError {
	a.countToken(reason)
	return &apiError{http.StatusUnauthorized, reason, msg}
}

// countToken counts a refused bearer token.
func (a *authenticator) countToken(reason string) {
	if a.metrics != nil {
		a.metrics.TokenRejections.WithLabelValues(reason).Inc()
	}
}

// reader authenticates a client of http_sd or admin endpoints: a client
// certificate whose role is one of roles, or else a token of scope want.
func (a *authenticator) reader(r *http.Request, want ca.Scope, roles ...ca.Role) (*identity, error) {
	cert, err := a.certificate(r)
	if err != nil {
		return nil, err
	}
	if cert != nil {
		for _, ok := range roles {
			if cert.Role == ok {
				return &identity{role: cert.Role, id: cert.ID, serial: serialHex(cert.Leaf)}, nil
			}
		}
		return nil, a.reject(&apiError{http.StatusForbidden, "wrong_role", fmt.Sprintf("a certificate of role %q may not use this endpoint", cert.Role)})
	}
	return a.token(r, want)
}

func scopeRole(s ca.Scope) ca.Role {
	switch s {
	case ca.ScopeAdmin:
		return ca.RoleAdmin
	case ca.ScopeDiscovery:
		return ca.RoleDiscovery
	}
	return ca.Role("enroll")
}

// bearer extracts a bearer token. Oversized headers are treated as garbage
// rather than parsed.
func bearer(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if h == "" || len(h) > maxAuthorizationHeader {
		return "", false
	}
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

func serialHex(c *x509.Certificate) string { return c.SerialNumber.Text(16) }
