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

package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
)

// The trust model separates certificates by issuer, not only by the role OU:
//
//   - ca.crt (the server CA; "the CA" of 0.1.0) signs the servers' serving
//     certificates and the two issuing CAs below. Its path length is 0, so
//     no certificate issued by an issuing CA ever verifies against ca.crt:
//     whoever trusts ca.crt for the server (agents, operators, Prometheus'
//     http_sd) accepts serving certificates only.
//   - agent-ca.crt signs agent certificates (clientAuth towards the server,
//     serverAuth for the relay). Prometheus' scrape jobs trust it, as a
//     trust anchor of its own.
//   - client-ca.crt signs `cert issue` certificates (discovery, admin). Its
//     extended key usage is clientAuth only, so nothing it issues can serve
//     TLS to a client that checks key usages (Go, OpenSSL). The server and
//     the agents' relays trust it.
//
// The issuing CAs are signed by ca.key although the path length forbids the
// path: the signature lets an agent that pins ca.crt check that a CA in a
// server's reply really comes from the server CA (VerifyIssuer).

// File names of the issuing CAs and the client CA bundle in the data
// directory.
const (
	AgentCACertFile  = "agent-ca.crt"
	AgentCAKeyFile   = "agent-ca.key"
	ClientCACertFile = "client-ca.crt"
	ClientCAKeyFile  = "client-ca.key"
	// ClientCAsFile bundles every CA whose certificates the server accepts
	// from clients: the agent CA, the client CA and, for certificates a
	// 0.1.0 server issued before the upgrade, ca.crt. It is what a web
	// config's client_ca_file names.
	ClientCAsFile = "client-cas.crt"
)

// IssuerRole names an issuing CA. It is written into the issuing CA's
// subject OU as "baremetal_sd:<issuer role>".
type IssuerRole string

// Issuing CAs below the server CA.
const (
	IssuerAgent  IssuerRole = "agent-ca"
	IssuerClient IssuerRole = "client-ca"
)

// issuer is a CA that signs leaf certificates.
type issuer struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
}

type issuerSpec struct {
	role     IssuerRole
	certFile string
	keyFile  string
	name     string
	usages   []x509.ExtKeyUsage
}

var (
	agentIssuer = issuerSpec{IssuerAgent, AgentCACertFile, AgentCAKeyFile, "baremetal_sd agent CA",
		[]x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	clientIssuer = issuerSpec{IssuerClient, ClientCACertFile, ClientCAKeyFile, "baremetal_sd client CA",
		[]x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
)

// loadOrCreateIssuer loads an issuing CA from dir, or creates it signed by
// root when neither of its files exists (the first start of this version,
// also on a 0.1.0 data directory).
func loadOrCreateIssuer(dir string, root *issuer, spec issuerSpec, create bool) (*issuer, bool, error) {
	certPath, keyPath := filepath.Join(dir, spec.certFile), filepath.Join(dir, spec.keyFile)
	found, err := keyPairFound(certPath, keyPath, spec.name)
	switch {
	case err != nil:
		return nil, false, err
	case found:
		iss, err := loadIssuer(certPath, keyPath, root, spec)
		return iss, false, err
	case !create:
		return nil, false, fmt.Errorf("%s missing: start the server of this version once on %s to create it", spec.certFile, dir)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("generate %s key: %w", spec.name, err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: spec.name, OrganizationalUnit: []string{ouPrefix + string(spec.role)}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              root.cert.NotAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		ExtKeyUsage:           spec.usages,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.cert, &key.PublicKey, root.key)
	if err != nil {
		return nil, false, fmt.Errorf("create %s certificate: %w", spec.name, err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, false, err
	}
	if err := fileutil.WriteAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, false, fmt.Errorf("write %s key: %w", spec.name, err)
	}
	if err := fileutil.WriteAtomic(certPath, encodeCert(der), 0o644); err != nil {
		return nil, false, fmt.Errorf("write %s certificate: %w", spec.name, err)
	}
	iss, err := loadIssuer(certPath, keyPath, root, spec)
	return iss, true, err
}

func loadIssuer(certPath, keyPath string, root *issuer, spec issuerSpec) (*issuer, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", spec.name, err)
	}
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if err := VerifyIssuer(cert, []*x509.Certificate{root.cert}, spec.role); err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	key, err := readKey(keyPath)
	if err != nil {
		return nil, fmt.Errorf("%s key: %w", spec.name, err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("%s does not match %s", keyPath, certPath)
	}
	return &issuer{cert: cert, certPEM: encodeCert(cert.Raw), key: key}, nil
}

// VerifyIssuer checks that cert is the issuing CA of role, signed by one of
// the pinned certificates (the server CA an agent or operator trusts). An
// agent calls it on every CA a register or renew reply carries, so that a
// reply can never make it trust a CA that the pinned one did not create.
func VerifyIssuer(cert *x509.Certificate, pinned []*x509.Certificate, role IssuerRole) error {
	if !cert.IsCA || !cert.BasicConstraintsValid {
		return fmt.Errorf("%s is not a CA certificate", cert.Subject.CommonName)
	}
	var ous int
	for _, ou := range cert.Subject.OrganizationalUnit {
		if ou == ouPrefix+string(role) {
			ous++
		}
	}
	if ous != 1 || len(cert.Subject.OrganizationalUnit) != 1 {
		return fmt.Errorf("%q is not a baremetal_sd %s", cert.Subject.CommonName, role)
	}
	for _, p := range pinned {
		if bytes.Equal(p.RawSubject, cert.RawIssuer) && cert.CheckSignatureFrom(p) == nil {
			return nil
		}
	}
	return fmt.Errorf("%s %q is not signed by the pinned CA", role, cert.Subject.CommonName)
}

// AgentCACertificatePEM returns the agent CA certificate: what Prometheus'
// scrape jobs trust.
func (a *Authority) AgentCACertificatePEM() []byte { return a.agentCA.certPEM }

// ClientCACertificatePEM returns the client CA certificate: what the
// agents' relays trust.
func (a *Authority) ClientCACertificatePEM() []byte { return a.clientCA.certPEM }

// AgentCACertificate returns the agent CA certificate.
func (a *Authority) AgentCACertificate() *x509.Certificate { return a.agentCA.cert }

// ClientCACertificate returns the client CA certificate.
func (a *Authority) ClientCACertificate() *x509.Certificate { return a.clientCA.cert }

// ClientCAsPEM bundles the CAs whose certificates the server accepts from
// clients (see ClientCAsFile).
func (a *Authority) ClientCAsPEM() []byte {
	var b bytes.Buffer
	b.Write(a.agentCA.certPEM)
	b.Write(a.clientCA.certPEM)
	b.Write(a.certPEM)
	return b.Bytes()
}

// ClientCAPool is the pool a TLS server verifies client certificates with:
// the CAs of ClientCAsPEM. A certificate it accepts must still pass
// VerifiedClient.
func (a *Authority) ClientCAPool() *x509.CertPool { return a.clientPool }

// Client is a verified client certificate with the role and id (common
// name) its subject carries.
type Client struct {
	Leaf *x509.Certificate
	Role Role
	ID   string
}

// VerifiedClient picks, from the chains the TLS layer verified, one that
// ends in our CAs with an issuer that may issue the leaf's role: agent
// certificates from the agent CA, discovery and admin certificates from the
// client CA. Certificates that a 0.1.0 server signed directly with ca.key
// are accepted in their role until they expire, so that agents and
// Prometheus keep working across the upgrade; ca.key signs no such
// certificate any more. A certificate it accepts has a known role, so its
// callers need no check of their own for one.
func (a *Authority) VerifiedClient(chains [][]*x509.Certificate) (*Client, error) {
	var err error
	for _, chain := range chains {
		var c *Client
		if c, err = a.checkClientChain(chain); err == nil {
			return c, nil
		}
	}
	if err == nil {
		err = errors.New("no verified chain")
	}
	return nil, err
}

// ClientRefusalStatus is the HTTP status that answers a client certificate
// VerifiedClient refused: 403 when the certificate is ours but its issuer
// may not issue its role (the client is known, and not allowed), 401
// otherwise. The API and the tunnel server answer alike through it.
func ClientRefusalStatus(err error) int {
	var wrong *WrongIssuerError
	if errors.As(err, &wrong) {
		return http.StatusForbidden
	}
	return http.StatusUnauthorized
}

// ErrNotOurs says that a certificate does not chain to this server's CAs.
var ErrNotOurs = errors.New("certificate not issued by the baremetal_sd CAs")

func (a *Authority) checkClientChain(chain []*x509.Certificate) (*Client, error) {
	if len(chain) < 2 {
		return nil, ErrNotOurs
	}
	anchor := chain[len(chain)-1]
	var allowed []Role
	switch {
	case bytes.Equal(anchor.Raw, a.agentCA.cert.Raw):
		allowed = []Role{RoleAgent}
	case bytes.Equal(anchor.Raw, a.clientCA.cert.Raw):
		allowed = []Role{RoleDiscovery, RoleAdmin}
	case bytes.Equal(anchor.Raw, a.cert.Raw) && len(chain) == 2:
		allowed = []Role{RoleAgent, RoleDiscovery, RoleAdmin}
	default:
		return nil, ErrNotOurs
	}
	role, id, err := Identify(chain[0])
	if err != nil {
		return nil, err
	}
	for _, r := range allowed {
		if role == r {
			return &Client{Leaf: chain[0], Role: role, ID: id}, nil
		}
	}
	return nil, &WrongIssuerError{Role: role, Issuer: anchor.Subject.CommonName}
}

// WrongIssuerError is a certificate whose role its issuer may not issue.
type WrongIssuerError struct {
	Role   Role
	Issuer string
}

func (e *WrongIssuerError) Error() string {
	return fmt.Sprintf("a certificate of role %q issued by %q is not accepted", e.Role, e.Issuer)
}

// IsLegacy reports whether cert, already verified by VerifiedClient, was
// signed directly by ca.key, as a 0.1.0 server signed agent and client
// certificates. The server asks agents that still hold one to renew at once.
// Its chain is verified, so the issuer's name tells: the issuing CAs have
// names of their own. That spares a signature check on every heartbeat.
func (a *Authority) IsLegacy(cert *x509.Certificate) bool {
	return bytes.Equal(cert.RawIssuer, a.cert.RawSubject)
}

// CheckServer is the role check that every client we ship applies to a
// server after TLS verified its chain: the leaf must be a serving
// certificate. Agent and client certificates carry their role in the
// subject, which only our CAs write, so none of them — also none issued by
// a 0.1.0 server — is ever accepted as the server, whatever CA file a
// client was given. A certificate with no baremetal_sd role at all comes
// from the operator's own PKI and is accepted as TLS verified it.
func CheckServer(leaf *x509.Certificate) error {
	if !hasRoleOU(leaf) {
		return nil
	}
	role, _, err := Identify(leaf)
	if err != nil {
		return fmt.Errorf("the server's certificate: %w", err)
	}
	if role != RoleServer {
		return fmt.Errorf("the server presented a certificate of role %q (%s), not a baremetal_sd server's: refusing to talk to it", role, leaf.Subject.CommonName)
	}
	return nil
}

func hasRoleOU(cert *x509.Certificate) bool {
	for _, ou := range cert.Subject.OrganizationalUnit {
		if len(ou) >= len(ouPrefix) && ou[:len(ouPrefix)] == ouPrefix {
			return true
		}
	}
	return false
}
