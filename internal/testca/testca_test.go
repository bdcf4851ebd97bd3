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

package testca

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// verify verifies c against roots for usage and name (a DNS name or an IP
// address; empty skips the name) at the time at.
func verify(c *Cert, roots *x509.CertPool, usage x509.ExtKeyUsage, name string, at time.Time) error {
	_, err := c.Cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}, DNSName: name, CurrentTime: at})
	return err
}

func TestCA_Issue(t *testing.T) {
	ca := New(t, "issuing CA")
	foreign := New(t, "foreign CA")
	now := time.Now()
	server := ca.Issue(t, Leaf{CommonName: "s", DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Usage: ServerAuth})
	client := ca.Issue(t, Leaf{CommonName: "c", Usage: ClientAuth})
	both := ca.Issue(t, Leaf{CommonName: "b", DNSNames: []string{"localhost"}, Usage: ServerAuth | ClientAuth})
	window := ca.Issue(t, Leaf{CommonName: "w", Usage: ClientAuth, NotBefore: now.Add(time.Hour), NotAfter: now.Add(2 * time.Hour)})
	tests := []struct {
		name  string
		cert  *Cert
		roots *x509.CertPool
		usage x509.ExtKeyUsage
		host  string
		at    time.Time
		ok    bool
	}{
		{"server for its DNS name", server, ca.Pool(), x509.ExtKeyUsageServerAuth, "localhost", now, true},
		{"server for its IP address", server, ca.Pool(), x509.ExtKeyUsageServerAuth, "127.0.0.1", now, true},
		{"server for another name", server, ca.Pool(), x509.ExtKeyUsageServerAuth, "example.com", now, false},
		{"server as a client", server, ca.Pool(), x509.ExtKeyUsageClientAuth, "", now, false},
		{"server from a foreign CA's view", server, foreign.Pool(), x509.ExtKeyUsageServerAuth, "localhost", now, false},
		{"client as a client", client, ca.Pool(), x509.ExtKeyUsageClientAuth, "", now, true},
		{"client as a server", client, ca.Pool(), x509.ExtKeyUsageServerAuth, "", now, false},
		{"both as a server", both, ca.Pool(), x509.ExtKeyUsageServerAuth, "localhost", now, true},
		{"both as a client", both, ca.Pool(), x509.ExtKeyUsageClientAuth, "", now, true},
		{"default window, now", client, ca.Pool(), x509.ExtKeyUsageClientAuth, "", now, true},
		{"default window, two hours ago", client, ca.Pool(), x509.ExtKeyUsageClientAuth, "", now.Add(-2 * time.Hour), false},
		{"default window, in two hours", client, ca.Pool(), x509.ExtKeyUsageClientAuth, "", now.Add(2 * time.Hour), false},
		{"window, before it", window, ca.Pool(), x509.ExtKeyUsageClientAuth, "", now, false},
		{"window, inside", window, ca.Pool(), x509.ExtKeyUsageClientAuth, "", now.Add(90 * time.Minute), true},
		{"window, after it", window, ca.Pool(), x509.ExtKeyUsageClientAuth, "", now.Add(3 * time.Hour), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := verify(tt.cert, tt.roots, tt.usage, tt.host, tt.at)
			if tt.ok && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.ok && err == nil {
				t.Fatal("verified")
			}
		})
	}
}

func TestCA_IssueFields(t *testing.T) {
	ca := New(t, "issuing CA")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("subject and serial", func(t *testing.T) {
		c := ca.Issue(t, Leaf{CommonName: "agent-1", OrganizationalUnit: []string{"role"}, Serial: 42, Usage: ClientAuth})
		if c.Cert.Subject.CommonName != "agent-1" || len(c.Cert.Subject.OrganizationalUnit) != 1 || c.Cert.Subject.OrganizationalUnit[0] != "role" {
			t.Errorf("subject %v", c.Cert.Subject)
		}
		if c.Cert.SerialNumber.Int64() != 42 {
			t.Errorf("serial %v, want 42", c.Cert.SerialNumber)
		}
		if c.Cert.IsCA {
			t.Error("a leaf is a CA")
		}
	})
	t.Run("random serials differ", func(t *testing.T) {
		a, b := ca.Issue(t, Leaf{Usage: ClientAuth}), ca.Issue(t, Leaf{Usage: ClientAuth})
		if a.Cert.SerialNumber.Cmp(b.Cert.SerialNumber) == 0 {
			t.Errorf("two leaves with serial %v", a.Cert.SerialNumber)
		}
	})
	t.Run("own public key", func(t *testing.T) {
		c := ca.Issue(t, Leaf{CommonName: "csr", Usage: ClientAuth, PublicKey: key.Public()})
		if c.Key != nil {
			t.Error("a key was made although the leaf brought its public key")
		}
		if !key.PublicKey.Equal(c.Cert.PublicKey) {
			t.Error("the certificate certifies another key")
		}
	})
	t.Run("made key", func(t *testing.T) {
		c := ca.Issue(t, Leaf{CommonName: "made", Usage: ServerAuth, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}})
		pair, err := tls.X509KeyPair(c.PEM(), c.KeyPEM(t))
		if err != nil {
			t.Fatalf("PEM and KeyPEM are no key pair: %v", err)
		}
		if !bytes.Equal(pair.Certificate[0], c.TLS().Certificate[0]) || c.TLS().Leaf != c.Cert {
			t.Error("TLS is not the certificate with Leaf set")
		}
		if chain := c.TLSChain().Certificate; len(chain) != 2 || !bytes.Equal(chain[1], ca.Cert.Raw) {
			t.Error("TLSChain does not end with the issuer")
		}
		if !bytes.Equal(c.ChainPEM(), append(c.PEM(), ca.PEM()...)) {
			t.Error("ChainPEM is not the certificate then the issuer")
		}
		certFile, keyFile := c.WriteFiles(t, t.TempDir(), "made")
		if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
			t.Fatalf("WriteFiles: %v", err)
		}
		if st, err := os.Stat(keyFile); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("key file: %v %v, want mode 0600", st, err)
		}
	})
	t.Run("no usage", func(t *testing.T) {
		if _, err := ca.Sign(Leaf{CommonName: "any"}); err == nil {
			t.Fatal("a leaf without a usage was signed")
		}
	})
}

func TestCA_Resign(t *testing.T) {
	old, current := New(t, "old CA"), New(t, "current CA")
	orig := current.Issue(t, Leaf{CommonName: "agent", OrganizationalUnit: []string{"role"}, DNSNames: []string{"localhost"}, Usage: ServerAuth | ClientAuth, Serial: 7})
	re := old.Resign(t, orig.Cert)
	if !bytes.Equal(re.Cert.RawSubject, orig.Cert.RawSubject) || re.Cert.SerialNumber.Cmp(orig.Cert.SerialNumber) != 0 ||
		!bytes.Equal(re.Cert.RawSubjectPublicKeyInfo, orig.Cert.RawSubjectPublicKeyInfo) ||
		!re.Cert.NotBefore.Equal(orig.Cert.NotBefore) || !re.Cert.NotAfter.Equal(orig.Cert.NotAfter) ||
		len(re.Cert.ExtKeyUsage) != 2 || len(re.Cert.DNSNames) != 1 {
		t.Fatalf("resigned certificate differs: %+v", re.Cert)
	}
	if err := verify(re, old.Pool(), x509.ExtKeyUsageServerAuth, "localhost", time.Now()); err != nil {
		t.Errorf("does not verify against the new issuer: %v", err)
	}
	if err := verify(re, current.Pool(), x509.ExtKeyUsageServerAuth, "localhost", time.Now()); err == nil {
		t.Error("verifies against the original issuer")
	}
}

func TestLoad_SignsAsTheCA(t *testing.T) {
	ca := New(t, "data dir CA")
	dir := t.TempDir()
	certFile := filepath.Join(dir, "ca.crt")
	if err := os.WriteFile(certFile, ca.PEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	sec1, err := x509.MarshalECPrivateKey(ca.Key.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		typ  string
		der  []byte
	}{{"PKCS #8", "PRIVATE KEY", pkcs8}, {"SEC 1", "EC PRIVATE KEY", sec1}} {
		t.Run(tt.name, func(t *testing.T) {
			keyFile := filepath.Join(dir, tt.name+".key")
			if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: tt.typ, Bytes: tt.der}), 0o600); err != nil {
				t.Fatal(err)
			}
			loaded := Load(t, certFile, keyFile)
			c := loaded.Issue(t, Leaf{CommonName: "c", Usage: ClientAuth})
			if err := verify(c, ca.Pool(), x509.ExtKeyUsageClientAuth, "", time.Now()); err != nil {
				t.Fatalf("a leaf of the loaded CA does not verify against the original: %v", err)
			}
		})
	}
}
