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
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func newCA(t testing.TB) (*Authority, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	a, created, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{CertFile, AgentCACertFile, ClientCACertFile}; !slices.Equal(created, want) {
		t.Fatalf("first LoadOrCreate created %v, want %v", created, want)
	}
	return a, dir
}

func csrFor(t testing.TB, key crypto.Signer, dns ...string) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: "evil", OrganizationalUnit: []string{"baremetal_sd:admin"}}, DNSNames: dns,
	}, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestLoadOrCreate_ReusesFiles(t *testing.T) {
	a, dir := newCA(t)
	for _, f := range []string{KeyFile, AgentCAKeyFile, ClientCAKeyFile} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %v, want 0600", f, st.Mode().Perm())
		}
	}
	b, created, err := LoadOrCreate(dir)
	if err != nil || len(created) != 0 {
		t.Fatalf("second LoadOrCreate: created=%v err=%v", created, err)
	}
	if !bytes.Equal(a.Certificate().Raw, b.Certificate().Raw) {
		t.Fatal("second start made a new CA")
	}
	if err := os.Remove(filepath.Join(dir, CertFile)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreate(dir); err == nil {
		t.Fatal("a key without its certificate was silently replaced")
	}
}

func TestParseCSR(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	good := csrFor(t, p256)
	block, _ := pem.Decode(good)
	tampered := bytes.Clone(block.Bytes)
	tampered[len(tampered)-4] ^= 0xff

	tests := []struct {
		name    string
		pem     []byte
		wantErr string
	}{
		{"P-256", good, ""},
		{"P-384", csrFor(t, p384), ""},
		{"Ed25519", csrFor(t, ed), ""},
		{"RSA 2048", csrFor(t, rsa2048), ""},
		{"RSA 1024", csrFor(t, rsa1024), "RSA key of 1024 bits"},
		{"P-224", csrFor(t, p224), "curve P-224"},
		{"bad signature", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: tampered}), "signature"},
		{"garbage", []byte("garbage"), "no PEM"},
		{"wrong block", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes}), "no PEM"},
		{"two blocks", append(bytes.Clone(good), good...), "unexpected data"},
		{"garbage DER", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1, 2, 3}}), "malformed"},
		{"oversize", append(bytes.Repeat([]byte(" "), maxPEMSize), good...), "larger than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseCSR(tt.pem)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestSignAgent_SANsAreTheRegistrations(t *testing.T) {
	a, _ := newCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, err := ParseCSR(csrFor(t, key, "evil.example.com", "localhost"))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		address string
		wantDNS []string
		wantIPs []string
	}{
		{"192.0.2.7", []string{"host1.example.com"}, []string{"192.0.2.7"}},
		{"2001:db8::7", []string{"host1.example.com"}, []string{"2001:db8::7"}},
		{"scrape.example.com", []string{"host1.example.com", "scrape.example.com"}, nil},
	}
	for _, tt := range tests {
		cert, chain, err := a.SignAgent(AgentCertRequest{AgentID: "id1", Hostname: "host1.example.com", Address: tt.address, PublicKey: csr.PublicKey, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		var ips []string
		for _, ip := range cert.IPAddresses {
			ips = append(ips, ip.String())
		}
		if strings.Join(cert.DNSNames, ",") != strings.Join(tt.wantDNS, ",") || strings.Join(ips, ",") != strings.Join(tt.wantIPs, ",") {
			t.Errorf("address %s: DNS %v IPs %v, want %v %v", tt.address, cert.DNSNames, ips, tt.wantDNS, tt.wantIPs)
		}
		role, id, err := Identify(cert)
		if err != nil || role != RoleAgent || id != "id1" {
			t.Errorf("Identify = %v %q %v, want agent id1", role, id, err)
		}
		if !bytes.HasSuffix(chain, a.AgentCACertificatePEM()) {
			t.Error("chain does not end with the agent CA certificate")
		}
		if _, err := cert.Verify(x509.VerifyOptions{Roots: a.ClientCAPool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("agent certificate does not verify as a client: %v", err)
		}
	}
}

func TestIssueClient_Roles(t *testing.T) {
	a, _ := newCA(t)
	for _, role := range []Role{RoleDiscovery, RoleAdmin} {
		certPEM, keyPEM, err := a.IssueClient("prometheus", role, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := ParseCertificatePEM(certPEM)
		if err != nil {
			t.Fatal(err)
		}
		if got, id, err := Identify(cert); err != nil || got != role || id != "prometheus" {
			t.Errorf("Identify = %v %q %v, want %v prometheus", got, id, err, role)
		}
		if !bytes.Contains(keyPEM, []byte("PRIVATE KEY")) {
			t.Error("no key returned")
		}
		if _, err := a.VerifyIgnoringExpiry(cert); err == nil {
			t.Errorf("%s certificate accepted as an agent certificate", role)
		}
	}
	if _, _, err := a.IssueClient("x", RoleAgent, time.Hour); err == nil {
		t.Error("IssueClient made an agent certificate")
	}
}

func TestEnsureServingCert(t *testing.T) {
	a, dir := newCA(t)
	names := []string{"server.example.com", "127.0.0.1"}
	certPath, keyPath := filepath.Join(dir, ServerCertFile), filepath.Join(dir, ServerKeyFile)
	if written, err := a.EnsureServingCert(dir, names, 365*24*time.Hour); err != nil || written == nil {
		t.Fatalf("first serving certificate: written %v, err %v", written, err)
	}
	first, _ := os.ReadFile(certPath)
	if st, _ := os.Stat(keyPath); st.Mode().Perm() != 0o600 {
		t.Errorf("server.key mode %v, want 0600", st.Mode().Perm())
	}
	if written, err := a.EnsureServingCert(dir, names, 365*24*time.Hour); err != nil || written != nil {
		t.Fatalf("valid serving certificate: written %v, err %v; want it kept", written, err)
	}
	if again, _ := os.ReadFile(certPath); !bytes.Equal(first, again) {
		t.Error("a valid serving certificate was replaced")
	}
	written, err := a.EnsureServingCert(dir, append(names, "new.example.com"), 365*24*time.Hour)
	if err != nil || written == nil {
		t.Fatalf("serving certificate for a new name: written %v, err %v", written, err)
	}
	third, _ := os.ReadFile(certPath)
	if onDisk, _ := ParseCertificatePEM(third); onDisk == nil || !onDisk.Equal(written) {
		t.Error("the returned certificate is not the one written")
	}
	if bytes.Equal(first, third) {
		t.Error("serving certificate not renewed for a new name")
	}
	cert, _ := ParseCertificatePEM(third)
	if err := cert.VerifyHostname("new.example.com"); err != nil {
		t.Error(err)
	}
	// A certificate from another CA is replaced.
	other, otherDir := newCA(t)
	if _, err := other.EnsureServingCert(otherDir, names, time.Hour); err != nil {
		t.Fatal(err)
	}
	foreign, _ := os.ReadFile(filepath.Join(otherDir, ServerCertFile))
	foreignKey, _ := os.ReadFile(filepath.Join(otherDir, ServerKeyFile))
	_ = os.WriteFile(certPath, foreign, 0o644)
	_ = os.WriteFile(keyPath, foreignKey, 0o600)
	if _, err := a.EnsureServingCert(dir, names, time.Hour); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(certPath)
	if bytes.Equal(got, foreign) {
		t.Error("serving certificate of another CA kept")
	}
}

func TestVerifyIgnoringExpiry(t *testing.T) {
	a, _ := newCA(t)
	other, _ := newCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	expired, _, err := a.SignAgent(AgentCertRequest{AgentID: "id", Hostname: "h", Address: "192.0.2.1", PublicKey: &key.PublicKey, TTL: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := a.VerifyIgnoringExpiry(expired); err != nil {
		t.Errorf("expired agent certificate of this CA refused: %v", err)
	} else if c.Role != RoleAgent || c.ID != "id" {
		t.Errorf("expired agent certificate identified as %s %q, want agent \"id\"", c.Role, c.ID)
	}
	foreign, _, _ := other.SignAgent(AgentCertRequest{AgentID: "id", Hostname: "h", Address: "192.0.2.1", PublicKey: &key.PublicKey, TTL: time.Hour})
	if _, err := a.VerifyIgnoringExpiry(foreign); err == nil {
		t.Error("certificate of another CA accepted")
	}
	// The renewal of an expired certificate needs no mTLS: an agent-role
	// certificate from the client CA, which only issues to Prometheus and
	// operators, must not speak for an agent there either.
	forged, _, err := a.clientCA.sign(&x509.Certificate{SerialNumber: newSerial(),
		Subject:   pkix.Name{CommonName: "id", OrganizationalUnit: []string{RoleOU(RoleAgent)}},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Minute), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	var wrong *WrongIssuerError
	if _, err := a.VerifyIgnoringExpiry(forged); !errors.As(err, &wrong) {
		t.Errorf("agent certificate from the client CA: %v, want a WrongIssuerError", err)
	}
}

func TestIdentify_Refuses(t *testing.T) {
	for _, ous := range [][]string{nil, {"ops"}, {"baremetal_sd:root"}, {"baremetal_sd:agent", "baremetal_sd:admin"}} {
		c := &x509.Certificate{Subject: pkix.Name{CommonName: "x", OrganizationalUnit: ous}}
		if _, _, err := Identify(c); err == nil {
			t.Errorf("OU %v accepted", ous)
		}
	}
}

func TestKeyFingerprint_StableAndDistinct(t *testing.T) {
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f1, _ := KeyFingerprint(&k1.PublicKey)
	f1b, _ := KeyFingerprint(k1.Public())
	f2, _ := KeyFingerprint(&k2.PublicKey)
	if f1 != f1b || f1 == f2 || len(f1) != 64 {
		t.Fatalf("fingerprints %s %s %s", f1, f1b, f2)
	}
}

func FuzzParseCSR(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.Add(csrFor(f, key))
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		csr, err := ParseCSR(data)
		if err == nil && checkPublicKey(csr.PublicKey) != nil {
			t.Fatal("accepted a CSR with a refused key")
		}
	})
}

func BenchmarkSignAgent(b *testing.B) {
	a, _ := newCA(b)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	req := AgentCertRequest{AgentID: "id", Hostname: "host.example.com", Address: net.IPv4(192, 0, 2, 1).String(), PublicKey: &key.PublicKey, TTL: time.Hour}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := a.SignAgent(req); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseCSR(b *testing.B) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	data := csrFor(b, key)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseCSR(data); err != nil {
			b.Fatal(err)
		}
	}
}
