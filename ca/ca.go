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
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
)

// Role says what a certificate's holder may do. It is written into the
// subject's OrganizationalUnit as "baremetal_sd:<role>" by this CA only, so
// a holder cannot choose it.
type Role string

// Roles of certificates issued by the CA.
const (
	RoleAgent     Role = "agent"
	RoleDiscovery Role = "discovery"
	RoleAdmin     Role = "admin"
	RoleServer    Role = "server"
)

const ouPrefix = "baremetal_sd:"

// RoleOU is the subject organizational unit that marks a certificate's role
// (see Identify).
func RoleOU(r Role) string { return ouPrefix + string(r) }

// File names in the server's data directory.
const (
	CertFile       = "ca.crt"
	KeyFile        = "ca.key"
	ServerCertFile = "server.crt"
	ServerKeyFile  = "server.key"
)

// Limits on input from the network.
const (
	maxPEMSize  = 16 << 10
	minRSABits  = 2048
	maxRSABits  = 8192
	caLifetime  = 10 * 365 * 24 * time.Hour
	clockSkew   = time.Minute
	serialBytes = 16
)

// Authority is the certificate authority of a baremetal_sd server.
type Authority struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer
	pool    *x509.CertPool
	// agentCA and clientCA issue agent and client certificates; ca.key
	// itself signs only serving certificates (see issuers.go).
	agentCA, clientCA *issuer
	// clientPool holds the CAs client certificates may chain to.
	clientPool *x509.CertPool
}

// LoadOrCreate loads ca.crt and ca.key from dir. When neither exists it
// creates dir (0700) and a new ECDSA P-256 CA; one without the other is an
// error rather than a silent replacement, which would orphan every issued
// certificate. It then loads the issuing CAs, creating those missing (a new
// data directory, or one a 0.1.0 server wrote), and returns the names of
// the certificate files it created.
func LoadOrCreate(dir string) (*Authority, []string, error) {
	a, created, err := loadOrCreateRoot(dir)
	if err != nil {
		return nil, nil, err
	}
	var files []string
	if created {
		files = append(files, CertFile)
	}
	if err := a.loadIssuers(dir, true, &files); err != nil {
		return nil, nil, err
	}
	if err := writeClientCAs(dir, a); err != nil {
		return nil, nil, err
	}
	return a, files, nil
}

// writeClientCAs writes ClientCAsFile, which web configs name as
// client_ca_file, unless it is up to date.
func writeClientCAs(dir string, a *Authority) error {
	path := filepath.Join(dir, ClientCAsFile)
	want := a.ClientCAsPEM()
	if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, want) {
		return nil
	}
	if err := fileutil.WriteAtomic(path, want, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", ClientCAsFile, err)
	}
	return nil
}

// Load loads an existing CA and its issuing CAs from dir.
func Load(dir string) (*Authority, error) {
	a, err := loadRoot(dir)
	if err != nil {
		return nil, err
	}
	if err := a.loadIssuers(dir, false, nil); err != nil {
		return nil, err
	}
	return a, nil
}

func (a *Authority) loadIssuers(dir string, create bool, created *[]string) error {
	root := a.root()
	for _, it := range []struct {
		spec issuerSpec
		dst  **issuer
	}{{agentIssuer, &a.agentCA}, {clientIssuer, &a.clientCA}} {
		iss, made, err := loadOrCreateIssuer(dir, root, it.spec, create)
		if err != nil {
			return err
		}
		if made && created != nil {
			*created = append(*created, it.spec.certFile)
		}
		*it.dst = iss
	}
	a.clientPool = x509.NewCertPool()
	a.clientPool.AddCert(a.agentCA.cert)
	a.clientPool.AddCert(a.clientCA.cert)
	a.clientPool.AddCert(a.cert)
	return nil
}

func loadOrCreateRoot(dir string) (*Authority, bool, error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	found, err := keyPairFound(certPath, keyPath, "CA")
	if err != nil {
		return nil, false, err
	}
	if found {
		a, err := loadRoot(dir)
		return a, false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, fmt.Errorf("create data directory: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, fmt.Errorf("generate CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: "baremetal_sd CA"},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caLifetime),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// Path length 0: no certificate below an issuing CA verifies
		// against ca.crt, so trusting ca.crt means trusting serving
		// certificates only (see issuers.go).
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, false, fmt.Errorf("create CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, false, err
	}
	// Key first: a crash between the two writes leaves a key without a
	// certificate, which LoadOrCreate reports instead of overwriting.
	if err := fileutil.WriteAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, false, fmt.Errorf("write CA key: %w", err)
	}
	if err := fileutil.WriteAtomic(certPath, encodeCert(der), 0o644); err != nil {
		return nil, false, fmt.Errorf("write CA certificate: %w", err)
	}
	a, err := loadRoot(dir)
	return a, true, err
}

func loadRoot(dir string) (*Authority, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CertFile))
	if err != nil {
		return nil, fmt.Errorf("read CA certificate: %w", err)
	}
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("ca.crt is not a CA certificate")
	}
	if !cert.MaxPathLenZero || cert.MaxPathLen != 0 {
		// A CA with a longer path would let certificates of the issuing
		// CAs verify against ca.crt, and so pose as the server to anyone
		// who trusts ca.crt.
		return nil, errors.New("ca.crt allows intermediate CAs (path length constraint is not 0): baremetal_sd needs a CA that signs end-entity certificates only")
	}
	key, err := readKey(filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, errors.New("ca.key does not match ca.crt")
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &Authority{cert: cert, certPEM: encodeCert(cert.Raw), key: key, pool: pool}, nil
}

// Certificate returns the CA certificate.
func (a *Authority) Certificate() *x509.Certificate { return a.cert }

// CertificatePEM returns the CA certificate in PEM.
func (a *Authority) CertificatePEM() []byte { return a.certPEM }

// Pool returns a pool holding only the CA certificate: what verifies the
// server.
func (a *Authority) Pool() *x509.CertPool { return a.pool }

// ParseCSR parses and checks a PEM certificate request received from the
// network. Errors are safe to show to the client.
func ParseCSR(pemData []byte) (*x509.CertificateRequest, error) {
	if len(pemData) > maxPEMSize {
		return nil, fmt.Errorf("larger than %d bytes", maxPEMSize)
	}
	block, rest := pem.Decode(pemData)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("no PEM CERTIFICATE REQUEST block")
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("unexpected data after the CERTIFICATE REQUEST block")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, errors.New("malformed certificate request")
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, errors.New("certificate request signature is invalid")
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, err
	}
	return csr, nil
}

// checkPublicKey accepts ECDSA P-256/P-384, Ed25519 and RSA of 2048 to 8192
// bits.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() {
			return fmt.Errorf("ECDSA curve %s is not accepted (P-256 or P-384)", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits || n > maxRSABits {
			return fmt.Errorf("RSA key of %d bits is not accepted (%d to %d)", n, minRSABits, maxRSABits)
		}
	default:
		return fmt.Errorf("key type %T is not accepted", pub)
	}
	return nil
}

// AgentCertRequest describes an agent certificate to sign.
type AgentCertRequest struct {
	AgentID   string
	Hostname  string
	Address   string
	PublicKey crypto.PublicKey
	TTL       time.Duration
}

// SignAgent issues an agent certificate. Its SANs are exactly the
// registration's hostname and address, whatever a CSR asked for: an agent
// must not obtain a certificate for a name it did not register.
func (a *Authority) SignAgent(req AgentCertRequest) (*x509.Certificate, []byte, error) {
	if err := checkPublicKey(req.PublicKey); err != nil {
		return nil, nil, err
	}
	if req.AgentID == "" || req.Hostname == "" || req.TTL <= 0 {
		return nil, nil, errors.New("agent id, hostname and a positive TTL are required")
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: req.AgentID, OrganizationalUnit: []string{ouPrefix + string(RoleAgent)}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(req.TTL),
		KeyUsage:     keyUsage(req.PublicKey),
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{req.Hostname},
	}
	if ip := net.ParseIP(req.Address); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	} else if req.Address != "" && req.Address != req.Hostname {
		tmpl.DNSNames = append(tmpl.DNSNames, req.Address)
	}
	return a.agentCA.sign(tmpl, req.PublicKey)
}

// IssueClient generates a key and a client certificate for Prometheus or an
// operator. The key is generated here because `cert issue` runs on the
// server host and hands both files to the operator.
func (a *Authority) IssueClient(name string, role Role, ttl time.Duration) (certPEM, keyPEM []byte, err error) {
	if role != RoleDiscovery && role != RoleAdmin {
		return nil, nil, fmt.Errorf("client role must be %s or %s, not %q", RoleDiscovery, RoleAdmin, role)
	}
	if name == "" || ttl <= 0 {
		return nil, nil, errors.New("name and a positive TTL are required")
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: name, OrganizationalUnit: []string{ouPrefix + string(role)}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	_, chain, err := a.clientCA.sign(tmpl, &key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	return chain, keyPEM, nil
}

// EnsureServingCert reuses dir/server.crt and dir/server.key when they are
// ours, cover every name and are not in the last third of their lifetime;
// otherwise it writes new ones and returns the new certificate (nil when it
// kept the old one). The key is written first and both atomically, and the
// TLS layer re-reads them on the next handshake.
func (a *Authority) EnsureServingCert(dir string, names []string, ttl time.Duration) (written *x509.Certificate, err error) {
	certPath, keyPath := filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile)
	if len(names) == 0 {
		return nil, errors.New("the serving certificate needs at least one name")
	}
	if a.servingCertUsable(certPath, keyPath, names) {
		return nil, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: names[0], OrganizationalUnit: []string{ouPrefix + string(RoleServer)}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	cert, chain, err := a.root().sign(tmpl, &key.PublicKey)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	if err := fileutil.WriteAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, fmt.Errorf("write serving key: %w", err)
	}
	if err := fileutil.WriteAtomic(certPath, chain, 0o644); err != nil {
		return nil, fmt.Errorf("write serving certificate: %w", err)
	}
	return cert, nil
}

func (a *Authority) servingCertUsable(certPath, keyPath string, names []string) bool {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return false
	}
	cert, err := ParseCertificatePEM(certPEM)
	if err != nil {
		return false
	}
	key, err := readKey(keyPath)
	if err != nil || !publicKeysEqual(key.Public(), cert.PublicKey) {
		return false
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: a.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return false
	}
	if remaining := time.Until(cert.NotAfter); remaining < cert.NotAfter.Sub(cert.NotBefore)/3 {
		return false
	}
	for _, n := range names {
		if cert.VerifyHostname(n) != nil {
			return false
		}
	}
	return true
}

// Identify returns the role and id (common name) of a certificate that the
// TLS layer already verified against this CA.
func Identify(cert *x509.Certificate) (Role, string, error) {
	var role Role
	for _, ou := range cert.Subject.OrganizationalUnit {
		if r, ok := strings.CutPrefix(ou, ouPrefix); ok {
			if role != "" {
				return "", "", errors.New("certificate has more than one role")
			}
			role = Role(r)
		}
	}
	switch role {
	case RoleAgent, RoleDiscovery, RoleAdmin, RoleServer:
	case "":
		return "", "", errors.New("certificate has no baremetal_sd role")
	default:
		return "", "", fmt.Errorf("unknown role %q", role)
	}
	if cert.Subject.CommonName == "" {
		return "", "", errors.New("certificate has no common name")
	}
	return role, cert.Subject.CommonName, nil
}

// VerifyIgnoringExpiry checks that cert is an agent certificate signed by
// this CA, as if it were checked at the end of its lifetime, and returns it
// with its id. It lets a host whose certificate expired while it was off
// prove who it was.
func (a *Authority) VerifyIgnoringExpiry(cert *x509.Certificate) (*Client, error) {
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:       a.clientPool,
		CurrentTime: cert.NotAfter.Add(-time.Second),
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("verify certificate: %w", err)
	}
	c, err := a.VerifiedClient(chains)
	if err != nil {
		return nil, err
	}
	if c.Role != RoleAgent {
		return nil, fmt.Errorf("a %s certificate is not an agent certificate", c.Role)
	}
	return c, nil
}

// KeyFingerprint is the hex SHA-256 of a public key's SPKI DER.
func KeyFingerprint(pub crypto.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("marshal public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// ParseCertificatePEM parses the first CERTIFICATE block of bounded PEM.
func ParseCertificatePEM(pemData []byte) (*x509.Certificate, error) {
	if len(pemData) > 4*maxPEMSize {
		return nil, fmt.Errorf("larger than %d bytes", 4*maxPEMSize)
	}
	block, _ := pem.Decode(pemData)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, errors.New("no PEM CERTIFICATE block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, errors.New("malformed certificate")
	}
	return cert, nil
}

func (a *Authority) root() *issuer { return &issuer{cert: a.cert, certPEM: a.certPEM, key: a.key} }

// sign signs tmpl and returns the certificate and the PEM chain: the
// certificate, then the issuer.
func (a *issuer) sign(tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, []byte, error) {
	if tmpl.NotAfter.After(a.cert.NotAfter) {
		tmpl.NotAfter = a.cert.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	chain := append(encodeCert(der), a.certPEM...)
	return cert, chain, nil
}

// keyUsage follows RFC 5280: RSA keys in TLS also encipher keys.
func keyUsage(pub crypto.PublicKey) x509.KeyUsage {
	if _, ok := pub.(*rsa.PublicKey); ok {
		return x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment
	}
	return x509.KeyUsageDigitalSignature
}

func newSerial() *big.Int {
	b := make([]byte, serialBytes)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	b[0] &= 0x7f        // positive, as RFC 5280 requires
	b[0] |= 0x01        // and never zero
	return new(big.Int).SetBytes(b)
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func readKey(path string) (crypto.Signer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, fmt.Errorf("%s: no PEM block", path)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("%s: unsupported PEM block %q", path, block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%s: key cannot sign", path)
	}
	return signer, nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ea.Equal(b)
}

// keyPairFound tells whether both a certificate and its key exist. One
// without the other is an error rather than a reason to make new ones,
// which would orphan every certificate the old pair issued; what names the
// pair in that error.
func keyPairFound(certPath, keyPath, what string) (bool, error) {
	certExists, err := exists(certPath)
	if err != nil {
		return false, err
	}
	keyExists, err := exists(keyPath)
	if err != nil {
		return false, err
	}
	if certExists != keyExists {
		return false, fmt.Errorf("found only one of %s and %s: restore the other or remove both to create a new %s", certPath, keyPath, what)
	}
	return certExists, nil
}

func exists(path string) (bool, error) {
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, err
}
