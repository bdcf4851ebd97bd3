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

// Package testca makes throw-away certificates for tests: self-signed CAs
// (the tests' own, or one of "nobody we know" to play a foreign issuer)
// and the leaves they issue. A certificate whose oddity is the point of a
// test (a malformed one, a CA with a path length) is better built in that
// test, where a reader sees what is odd about it.
package testca

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is an issuer: a CA certificate and its key. Tests make their own
// with New, or wrap one they read from a data directory to sign as it.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
}

// New returns a self-signed P-256 CA named commonName, valid from a day
// ago to a day from now, so that tests can have it sign certificates that
// expired or that a clock running behind sees as not yet valid.
func New(t testing.TB, commonName string) *CA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: commonName},
		NotBefore:             time.Now().Add(-24 * time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &CA{Cert: cert, Key: key}
}

// Load reads a CA from a PEM certificate file and a PEM key file (PKCS #8
// or SEC 1), as a test that signs with a data directory's CA does: what a
// thief of that key could do, or what an older release did.
func Load(t testing.TB, certFile, keyFile string) *CA {
	t.Helper()
	block := readPEM(t, certFile)
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", certFile, err)
	}
	block = readPEM(t, keyFile)
	var key any
	if block.Type == "EC PRIVATE KEY" {
		key, err = x509.ParseECPrivateKey(block.Bytes)
	} else {
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	}
	if err != nil {
		t.Fatalf("%s: %v", keyFile, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		t.Fatalf("%s: a %T cannot sign", keyFile, key)
	}
	return &CA{Cert: cert, Key: signer}
}

// readPEM returns the first PEM block of path.
func readPEM(t testing.TB, path string) *pem.Block {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", path)
	}
	return block
}

// Pool returns a pool that trusts only this CA.
func (c *CA) Pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(c.Cert)
	return pool
}

// PEM returns the CA certificate in PEM, as a CA file holds it.
func (c *CA) PEM() []byte { return certPEM(c.Cert.Raw) }

// Usage is what a leaf may authenticate: ServerAuth, ClientAuth or both.
type Usage int

// The usages of a leaf, as its extended key usage states them.
const (
	ServerAuth Usage = 1 << iota
	ClientAuth
)

// Leaf describes a certificate for CA.Issue. Only what tests vary is here;
// every leaf is for digital signatures and is not a CA.
type Leaf struct {
	CommonName string
	// OrganizationalUnit is the subject's OU, where our certificates carry
	// their role.
	OrganizationalUnit []string
	DNSNames           []string
	IPAddresses        []net.IP
	// Usage is required: a leaf without an extended key usage would be
	// valid for every use, which no test of a trust decision wants by
	// accident.
	Usage Usage
	// Serial is the serial number; zero picks a random one.
	Serial int64
	// NotBefore and NotAfter default to an hour ago and an hour from now.
	NotBefore, NotAfter time.Time
	// PublicKey is the key to certify, as from a CSR; without one, Issue
	// makes a P-256 key and returns it with the certificate.
	PublicKey crypto.PublicKey
}

// Cert is an issued certificate with its issuer and, when Issue made the
// key, its private key.
type Cert struct {
	// Cert is the parsed certificate; Cert.Raw is its DER.
	Cert *x509.Certificate
	// Key is nil when the Leaf brought its own public key.
	Key    crypto.Signer
	Issuer *x509.Certificate
}

// Issue signs l with the CA and fails the test if it cannot.
func (c *CA) Issue(t testing.TB, l Leaf) *Cert {
	t.Helper()
	cert, err := c.Sign(l)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// Sign signs l with the CA. It is Issue for code that must not stop the
// test, such as a fake server's handler, which runs on a goroutine of its
// own.
func (c *CA) Sign(l Leaf) (*Cert, error) {
	var usage []x509.ExtKeyUsage
	if l.Usage&ServerAuth != 0 {
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	}
	if l.Usage&ClientAuth != 0 {
		usage = append(usage, x509.ExtKeyUsageClientAuth)
	}
	if len(usage) == 0 {
		return nil, errors.New("leaf without a usage")
	}
	serial := big.NewInt(l.Serial)
	if l.Serial == 0 {
		var err error
		if serial, err = rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120)); err != nil {
			return nil, fmt.Errorf("serial: %w", err)
		}
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: l.CommonName, OrganizationalUnit: l.OrganizationalUnit},
		NotBefore:    l.NotBefore,
		NotAfter:     l.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  usage,
		DNSNames:     l.DNSNames,
		IPAddresses:  l.IPAddresses,
	}
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = now.Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = now.Add(time.Hour)
	}
	var key crypto.Signer
	pub := l.PublicKey
	if pub == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("generate key: %w", err)
		}
		key, pub = k, k.Public()
	}
	cert, err := c.sign(tmpl, pub)
	if err != nil {
		return nil, err
	}
	return &Cert{Cert: cert, Key: key, Issuer: c.Cert}, nil
}

// Resign signs leaf again with the CA: the same subject, names, serial,
// validity, usages and public key, as another issuer (an older release's
// CA, say) would have signed it. The key stays with the caller.
func (c *CA) Resign(t testing.TB, leaf *x509.Certificate) *Cert {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: leaf.SerialNumber,
		Subject:      leaf.Subject,
		NotBefore:    leaf.NotBefore,
		NotAfter:     leaf.NotAfter,
		KeyUsage:     leaf.KeyUsage,
		ExtKeyUsage:  leaf.ExtKeyUsage,
		DNSNames:     leaf.DNSNames,
		IPAddresses:  leaf.IPAddresses,
	}
	cert, err := c.sign(tmpl, leaf.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return &Cert{Cert: cert, Issuer: c.Cert}
}

func (c *CA) sign(tmpl *x509.Certificate, pub crypto.PublicKey) (*x509.Certificate, error) {
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.Cert, pub, c.Key)
	if err != nil {
		return nil, fmt.Errorf("sign %q: %w", tmpl.Subject.CommonName, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", tmpl.Subject.CommonName, err)
	}
	return cert, nil
}

// TLS returns the certificate alone and its key for a tls.Config, with
// Leaf set.
func (c *Cert) TLS() tls.Certificate {
	return tls.Certificate{Certificate: [][]byte{c.Cert.Raw}, PrivateKey: c.Key, Leaf: c.Cert}
}

// TLSChain is TLS with the issuer's certificate after the leaf, as a peer
// whose certificate comes from an intermediate CA presents it.
func (c *Cert) TLSChain() tls.Certificate {
	tc := c.TLS()
	tc.Certificate = append(tc.Certificate, c.Issuer.Raw)
	return tc
}

// PEM returns the certificate in PEM.
func (c *Cert) PEM() []byte { return certPEM(c.Cert.Raw) }

// ChainPEM returns the certificate and then its issuer in PEM, as our CA
// hands out a chain.
func (c *Cert) ChainPEM() []byte { return append(c.PEM(), certPEM(c.Issuer.Raw)...) }

// KeyPEM returns the private key in PKCS #8 PEM; the test fails if
// the certificate has no key of Issue's making.
func (c *Cert) KeyPEM(t testing.TB) []byte {
	t.Helper()
	if c.Key == nil {
		t.Fatalf("%q: no private key", c.Cert.Subject.CommonName)
	}
	der, err := x509.MarshalPKCS8PrivateKey(c.Key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// WriteFiles writes dir/name.crt (0644) and dir/name.key (0600) and
// returns their paths.
func (c *Cert) WriteFiles(t testing.TB, dir, name string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key")
	if err := os.WriteFile(certFile, c.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, c.KeyPEM(t), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
