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
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fleet is an authority with one certificate of every kind it issues, and
// one that a 0.1.0 server issued.
type fleet struct {
	a                          *Authority
	dir                        string
	agent, client, server      *x509.Certificate
	legacyAgent, legacyClient  *x509.Certificate
	agentChain, clientChain    []*x509.Certificate
	serverChain, legacyAgentCh []*x509.Certificate
}

func chainOf(t *testing.T, chainPEM []byte) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for rest := chainPEM; ; {
		c, err := ParseCertificatePEM(rest)
		if err != nil {
			break
		}
		out = append(out, c)
		i := bytes.Index(rest, []byte("-----END CERTIFICATE-----"))
		rest = rest[i+len("-----END CERTIFICATE-----"):]
	}
	if len(out) == 0 {
		t.Fatal("no certificate in chain")
	}
	return out
}

// signLegacy signs a certificate as 0.1.0 did: directly with ca.key, with
// the role OU, serverAuth and clientAuth for agents.
func signLegacy(t *testing.T, a *Authority, cn string, role Role) *x509.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: cn, OrganizationalUnit: []string{RoleOU(role)}},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	if role != RoleAgent {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	c, _, err := a.root().sign(tmpl, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	a, dir := newCA(t)
	f := &fleet{a: a, dir: dir}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	// The attack of the security review: an agent that registers as the
	// server's own names.
	_, chain, err := a.SignAgent(AgentCertRequest{AgentID: "impostor", Hostname: "localhost", Address: "127.0.0.1", PublicKey: &key.PublicKey, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	f.agentChain = chainOf(t, chain)
	f.agent = f.agentChain[0]
	certPEM, _, err := a.IssueClient("prometheus", RoleAdmin, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	f.clientChain = chainOf(t, certPEM)
	f.client = f.clientChain[0]
	if _, err := a.EnsureServingCert(dir, []string{"localhost", "127.0.0.1"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	servingPEM, err := os.ReadFile(filepath.Join(dir, ServerCertFile))
	if err != nil {
		t.Fatal(err)
	}
	f.serverChain = chainOf(t, servingPEM)
	f.server = f.serverChain[0]
	f.legacyAgent = signLegacy(t, a, "old-agent", RoleAgent)
	f.legacyAgentCh = []*x509.Certificate{f.legacyAgent}
	f.legacyClient = signLegacy(t, a, "old-prometheus", RoleDiscovery)
	return f
}

func pool(certs ...*x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	for _, c := range certs {
		p.AddCert(c)
	}
	return p
}

// TestIssuers_OnlyServingCertificatesVerifyAsTheServer checks every
// certificate the authority issues against every CA file a client may be
// given, as a TLS client does (serverAuth, the peer's chain as
// intermediates), and against the role check of our own clients.
func TestIssuers_OnlyServingCertificatesVerifyAsTheServer(t *testing.T) {
	f := newFleet(t)
	caFiles := map[string]*x509.CertPool{
		"ca.crt":        f.a.Pool(),
		"agent-ca.crt":  pool(f.a.AgentCACertificate()),
		"client-ca.crt": pool(f.a.ClientCACertificate()),
	}
	tests := []struct {
		name  string
		chain []*x509.Certificate
		// verifies lists the CA files under which the chain verifies for
		// serverAuth at 127.0.0.1.
		verifies   []string
		roleAccept bool
	}{
		{"serving certificate", f.serverChain, []string{"ca.crt"}, true},
		{"agent certificate for localhost", f.agentChain, []string{"agent-ca.crt"}, false},
		{"client certificate", f.clientChain, nil, false},
		// Until it expires: why the server asks for renewal at once.
		{"0.1.0 agent certificate", f.legacyAgentCh, []string{"ca.crt"}, false},
		{"0.1.0 client certificate", []*x509.Certificate{f.legacyClient}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for file, roots := range caFiles {
				_, err := tt.chain[0].Verify(x509.VerifyOptions{
					DNSName:       "127.0.0.1",
					Roots:         roots,
					Intermediates: pool(tt.chain[1:]...),
					KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
				})
				want := false
				for _, v := range tt.verifies {
					want = want || v == file
				}
				if (err == nil) != want {
					t.Errorf("verifies as a server under %s: %v, want %v (err %v)", file, err == nil, want, err)
				}
			}
			if err := CheckServer(tt.chain[0]); (err == nil) != tt.roleAccept {
				t.Errorf("CheckServer = %v, want accepted %v", err, tt.roleAccept)
			}
		})
	}
}

func TestCheckServer_ForeignPKI(t *testing.T) {
	other, _ := newCA(t)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: newSerial(), Subject: pkix.Name{CommonName: "sd.example.com"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	c, _, err := other.root().sign(tmpl, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := CheckServer(c); err != nil {
		t.Fatalf("a serving certificate of the operator's own PKI: %v", err)
	}
	if err := CheckServer(other.AgentCACertificate()); err == nil {
		t.Fatal("an issuing CA's certificate accepted as the server")
	}
}

func TestVerifiedClient_RoleFromItsIssuerOnly(t *testing.T) {
	f := newFleet(t)
	foreign := newFleet(t)
	// A discovery certificate from the agent CA: never issued, but if it
	// were, the role must not be taken from it.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	forged, _, err := f.a.agentCA.sign(&x509.Certificate{SerialNumber: newSerial(),
		Subject:   pkix.Name{CommonName: "forged", OrganizationalUnit: []string{RoleOU(RoleAdmin)}},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, &key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	verify := func(chain []*x509.Certificate) [][]*x509.Certificate {
		chains, err := chain[0].Verify(x509.VerifyOptions{Roots: f.a.ClientCAPool(), Intermediates: pool(chain[1:]...), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if err != nil {
			return nil
		}
		return chains
	}
	tests := []struct {
		name    string
		chain   []*x509.Certificate
		wantErr error
	}{
		{"agent", f.agentChain, nil},
		{"client", f.clientChain, nil},
		{"0.1.0 agent", f.legacyAgentCh, nil},
		{"0.1.0 client", []*x509.Certificate{f.legacyClient}, nil},
		{"admin role from the agent CA", []*x509.Certificate{forged, f.a.AgentCACertificate()}, &WrongIssuerError{}},
		{"serving certificate as a client", f.serverChain, &WrongIssuerError{}},
		{"another server's agent", foreign.agentChain, ErrNotOurs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chains := verify(tt.chain)
			if chains == nil {
				// The serving certificate has no clientAuth: TLS refuses it
				// already. Check the chain as it is.
				chains = [][]*x509.Certificate{tt.chain}
			}
			c, err := f.a.VerifiedClient(chains)
			var wrong *WrongIssuerError
			switch {
			case err == nil:
				if role, id, _ := Identify(tt.chain[0]); c.Leaf != tt.chain[0] || c.Role != role || c.ID != id {
					t.Fatalf("VerifiedClient = %s %q, want the leaf's %s %q", c.Role, c.ID, role, id)
				}
			case tt.wantErr == nil && err != nil:
				t.Fatalf("VerifiedClient: %v", err)
			case errors.As(tt.wantErr, &wrong) && !errors.As(err, &wrong):
				t.Fatalf("VerifiedClient = %v, want a WrongIssuerError", err)
			case errors.Is(tt.wantErr, ErrNotOurs) && !errors.Is(err, ErrNotOurs):
				t.Fatalf("VerifiedClient = %v, want ErrNotOurs", err)
			}
		})
	}
	if !f.a.IsLegacy(f.legacyAgent) || f.a.IsLegacy(f.agent) {
		t.Error("IsLegacy does not tell 0.1.0 agent certificates from new ones")
	}
}

func TestVerifyIssuer_PinnedCAOnly(t *testing.T) {
	f := newFleet(t)
	foreign := newFleet(t)
	pinned := []*x509.Certificate{f.a.Certificate()}
	tests := []struct {
		name string
		cert *x509.Certificate
		role IssuerRole
		want string
	}{
		{"agent CA", f.a.AgentCACertificate(), IssuerAgent, ""},
		{"client CA", f.a.ClientCACertificate(), IssuerClient, ""},
		{"agent CA as client CA", f.a.AgentCACertificate(), IssuerClient, "is not a baremetal_sd client-ca"},
		{"impostor's client CA", foreign.a.ClientCACertificate(), IssuerClient, "not signed by the pinned CA"},
		{"impostor's root", foreign.a.Certificate(), IssuerClient, "not a baremetal_sd client-ca"},
		{"agent certificate", f.agent, IssuerAgent, "not a CA certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyIssuer(tt.cert, pinned, tt.role)
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("VerifyIssuer = %v, want %q", err, tt.want)
			}
		})
	}
}

// TestLoadOrCreate_UpgradesA010DataDir: a data directory with only the
// 0.1.0 files gets its issuing CAs; ca.crt, which agents and Prometheus
// pin, stays as it was.
func TestLoadOrCreate_UpgradesA010DataDir(t *testing.T) {
	a, dir := newCA(t)
	for _, name := range []string{AgentCACertFile, AgentCAKeyFile, ClientCACertFile, ClientCAKeyFile} {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Load(dir); err == nil {
		t.Fatal("Load of a 0.1.0 data directory did not ask for a server start")
	}
	b, created, err := LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(created) != 2 || !bytes.Equal(a.Certificate().Raw, b.Certificate().Raw) {
		t.Fatalf("upgrade created %v and kept the CA: %v", created, bytes.Equal(a.Certificate().Raw, b.Certificate().Raw))
	}
	for _, name := range []string{AgentCAKeyFile, ClientCAKeyFile} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v %v, want mode 0600", name, st, err)
		}
	}
	// One issuing CA file without its key is not silently replaced.
	if err := os.Remove(filepath.Join(dir, ClientCAKeyFile)); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreate(dir); err == nil {
		t.Fatal("a client CA without its key was replaced")
	}
}

func TestLoad_RefusesACAThatAllowsIntermediates(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: newSerial(), Subject: pkix.Name{CommonName: "own CA"},
		NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1,
		KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := encodeKey(key)
	if err := os.WriteFile(filepath.Join(dir, KeyFile), keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, CertFile), encodeCert(der), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreate(dir); err == nil || !strings.Contains(err.Error(), "path length") {
		t.Fatalf("LoadOrCreate with a CA of path length 1: %v", err)
	}
}

func TestClientRefusalStatus(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"wrong issuer", fmt.Errorf("wrapped: %w", &WrongIssuerError{Role: RoleAdmin, Issuer: "agent CA"}), http.StatusForbidden},
		{"not ours", ErrNotOurs, http.StatusUnauthorized},
		{"no role", errors.New("certificate has no baremetal_sd role"), http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ClientRefusalStatus(tt.err); got != tt.want {
				t.Errorf("ClientRefusalStatus(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}
