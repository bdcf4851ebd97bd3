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

package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

func newTestLifecycle(t *testing.T) (*lifecycle, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{StateDir: t.TempDir()}
	cfg.normalizeTunables()
	l := newLifecycle(cfg, key, protocol.RegisterRequest{Hostname: "h"}, collector.NewAgent(prometheus.NewRegistry(), registrationStates()))
	return l, key
}

func TestLifecycle_RenewAt(t *testing.T) {
	ca := newTestCA(t)
	now := time.Now().Truncate(time.Second)
	tests := []struct {
		name              string
		notBefore, expiry time.Time
		renewAfter        time.Time // persisted from the server's answer
		receivedAt        time.Time
		want              time.Time
	}{
		{"two thirds", now, now.Add(3 * time.Hour), time.Time{}, time.Time{}, now.Add(2 * time.Hour)},
		{"server's renew_after", now, now.Add(3 * time.Hour), now.Add(time.Hour), time.Time{}, now.Add(time.Hour)},
		{"renew_after outside the lifetime is ignored", now, now.Add(3 * time.Hour), now.Add(5 * time.Hour), time.Time{}, now.Add(2 * time.Hour)},
		{"backdated start is not due at once", now.Add(-time.Hour), now.Add(30 * time.Second), time.Time{}, now, now.Add(20 * time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, key := newTestLifecycle(t)
			leaf, chain := ca.sign(t, "a", &key.PublicKey, tt.notBefore, tt.expiry)
			c, err := keyPair([]*x509.Certificate{leaf}, key)
			if err != nil {
				t.Fatal(err)
			}
			l.cert.Store(c)
			l.certPEM = chain
			l.persisted = persistedState{CertSerial: serialOf(c), RenewAfter: tt.renewAfter}
			l.receivedAt = tt.receivedAt
			if got := l.renewAt(); !got.Equal(tt.want) {
				t.Errorf("renewAt = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLifecycle_ClientCertificate(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	l, key := newTestLifecycle(t)
	cri := func(cas ...*testCA) *tls.CertificateRequestInfo {
		info := &tls.CertificateRequestInfo{
			SignatureSchemes: []tls.SignatureScheme{tls.ECDSAWithP256AndSHA256},
			Version:          tls.VersionTLS13,
		}
		for _, c := range cas {
			info.AcceptableCAs = append(info.AcceptableCAs, c.cert.RawSubject)
		}
		return info
	}
	set := func(notAfter time.Time) *tls.Certificate {
		leaf, _ := ca.sign(t, "a", &key.PublicKey, time.Now().Add(-2*time.Hour), notAfter)
		c, err := keyPair([]*x509.Certificate{leaf, ca.cert}, key)
		if err != nil {
			t.Fatal(err)
		}
		l.cert.Store(c)
		return c
	}
	tests := []struct {
		name     string
		setup    func() *tls.Certificate
		info     *tls.CertificateRequestInfo
		wantSent bool
	}{
		{"none yet", func() *tls.Certificate { return nil }, cri(ca), false},
		{"valid", func() *tls.Certificate { return set(time.Now().Add(time.Hour)) }, cri(ca), true},
		{"valid, server lists no CAs", func() *tls.Certificate { return set(time.Now().Add(time.Hour)) }, cri(), true},
		{"expired", func() *tls.Certificate { return set(time.Now().Add(-time.Hour)) }, cri(ca), false},
		{"server trusts another CA", func() *tls.Certificate { return set(time.Now().Add(time.Hour)) }, cri(other), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.setup()
			got, err := l.clientCertificate(tt.info)
			if err != nil {
				t.Fatal(err)
			}
			if sent := len(got.Certificate) > 0; sent != tt.wantSent {
				t.Fatalf("certificate sent = %v, want %v", sent, tt.wantSent)
			}
			if tt.wantSent && got != want {
				t.Error("sent another certificate than the current one")
			}
		})
	}
}

func TestLifecycle_CheckResponse(t *testing.T) {
	ca := newTestCA(t)
	other := newTestCA(t)
	l, key := newTestLifecycle(t)
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	_, good := ca.sign(t, "a", &key.PublicKey, now, now.Add(time.Hour))
	_, foreignKey := ca.sign(t, "a", &otherKey.PublicKey, now, now.Add(time.Hour))
	_, foreignCA := other.sign(t, "a", &key.PublicKey, now, now.Add(time.Hour))
	tests := []struct {
		name string
		resp protocol.CertificateResponse
		want string
	}{
		{"good", protocol.CertificateResponse{Certificate: string(good), CACertificate: string(ca.pem)}, ""},
		{"another key", protocol.CertificateResponse{Certificate: string(foreignKey), CACertificate: string(ca.pem)}, "does not match"},
		{"another CA", protocol.CertificateResponse{Certificate: string(foreignCA), CACertificate: string(ca.pem)}, "does not chain"},
		{"no CA", protocol.CertificateResponse{Certificate: string(good)}, "no CA"},
		{"no certificate", protocol.CertificateResponse{CACertificate: string(ca.pem)}, "no PEM certificate"},
		{"garbage", protocol.CertificateResponse{Certificate: "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", CACertificate: string(ca.pem)}, "parse certificate"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := l.checkResponse(&tt.resp)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("checkResponse: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("checkResponse error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestRun_MissingCAFileRegistersAgain(t *testing.T) {
	h := newHarness(t)
	cfg := h.config()
	cfg.DeregisterOnShutdown = false
	r, _ := h.enrolled(cfg)
	if err := r.stop(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(h.dir, CAFile)); err != nil {
		t.Fatal(err)
	}
	h.start(cfg)
	h.waitFor("the agent to serve again", func() bool { return h.metric(stateSeries("registered")) == 1 })
	if n := h.fake.count("register:mtls"); n != 1 {
		t.Errorf("mTLS registrations = %d, want 1", n)
	}
}

func FuzzParseChain(f *testing.F) {
	ca := newTestCA(f)
	f.Add(ca.pem)
	f.Add([]byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		chain, err := parseChain(data)
		if err == nil && (len(chain) == 0 || len(chain) > maxChainLen) {
			t.Fatalf("parseChain returned %d certificates without an error", len(chain))
		}
	})
}
