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

package tunnel

import (
	"crypto/tls"
	"slices"
	"testing"
)

// TestClient_TLSForIdleTunnels: what the server keeps per tunnel depends on
// what the agent sends in its handshake: its certificate without the
// issuer, and a ClientHello without the hybrid post-quantum key share,
// unless the caller chose curves itself.
func TestClient_TLSForIdleTunnels(t *testing.T) {
	chain := tls.Certificate{Certificate: [][]byte{[]byte("leaf"), []byte("issuer")}}
	for _, tc := range []struct {
		name       string
		tls        *tls.Config
		wantCurves []tls.CurveID
	}{
		{"static certificate", &tls.Config{Certificates: []tls.Certificate{chain}}, []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}},
		{"certificate callback", &tls.Config{GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &chain, nil }}, []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}},
		{"curves chosen by the caller", &tls.Config{Certificates: []tls.Certificate{chain}, CurvePreferences: []tls.CurveID{tls.X25519MLKEM768}}, []tls.CurveID{tls.X25519MLKEM768}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(ClientConfig{Servers: []string{"https://127.0.0.1:1"}, TLS: tc.tls, Local: "127.0.0.1:2"})
			if err != nil {
				t.Fatal(err)
			}
			got := c.cfg.TLS
			var sent *tls.Certificate
			if got.GetClientCertificate != nil {
				if sent, err = got.GetClientCertificate(&tls.CertificateRequestInfo{}); err != nil {
					t.Fatal(err)
				}
			} else {
				sent = &got.Certificates[0]
			}
			if len(sent.Certificate) != 1 || string(sent.Certificate[0]) != "leaf" {
				t.Errorf("the tunnel presents %q, want the leaf alone", sent.Certificate)
			}
			if !slices.Equal(got.CurvePreferences, tc.wantCurves) {
				t.Errorf("curves: %v, want %v", got.CurvePreferences, tc.wantCurves)
			}
			// The caller's own configuration is left as it was.
			if len(tc.tls.Certificates) > 0 && len(tc.tls.Certificates[0].Certificate) != 2 {
				t.Fatal("the caller's certificate lost its chain")
			}
		})
	}
}
