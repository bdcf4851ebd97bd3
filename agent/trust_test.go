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
	"bytes"
	"crypto/x509"
	"strings"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// TestCheckReplyCAs_PinnedCAOnly: a reply, from an impostor or a server of
// another fleet, can never make the agent trust a CA its pinned CA did not
// sign; the relay's client CA is the fleet's own client CA only.
func TestCheckReplyCAs_PinnedCAOnly(t *testing.T) {
	fleetCA, _, err := ca.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	impostor, _, err := ca.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pinned := []*x509.Certificate{fleetCA.Certificate()}
	good := protocol.CertificateResponse{
		CACertificate:       "ignored by this version",
		AgentCACertificate:  string(fleetCA.AgentCACertificatePEM()),
		ClientCACertificate: string(fleetCA.ClientCACertificatePEM()),
	}
	tests := []struct {
		name   string
		mutate func(*protocol.CertificateResponse)
		pinned []*x509.Certificate
		want   string
	}{
		{"real server", func(*protocol.CertificateResponse) {}, pinned, ""},
		{"impostor's client CA", func(r *protocol.CertificateResponse) {
			r.ClientCACertificate = string(impostor.ClientCACertificatePEM())
		}, pinned, "not signed by the pinned CA"},
		{"impostor's agent CA", func(r *protocol.CertificateResponse) {
			r.AgentCACertificate = string(impostor.AgentCACertificatePEM())
		}, pinned, "not signed by the pinned CA"},
		{"agent CA offered as the client CA", func(r *protocol.CertificateResponse) {
			r.ClientCACertificate = string(fleetCA.AgentCACertificatePEM())
		}, pinned, "not a baremetal_sd client-ca"},
		{"two client CAs", func(r *protocol.CertificateResponse) {
			r.ClientCACertificate += string(impostor.ClientCACertificatePEM())
		}, pinned, "want 1"},
		{"0.1.0 server, the pinned CA", func(r *protocol.CertificateResponse) {
			*r = protocol.CertificateResponse{CACertificate: string(fleetCA.CertificatePEM())}
		}, pinned, ""},
		{"0.1.0-style reply with the impostor's CA", func(r *protocol.CertificateResponse) {
			*r = protocol.CertificateResponse{CACertificate: string(impostor.CertificatePEM())}
		}, pinned, "not the CA in --discovery.ca-file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := good
			tt.mutate(&resp)
			cas, err := checkReplyCAs(&resp, tt.pinned)
			if tt.want != "" {
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("checkReplyCAs = %v, want an error containing %q", err, tt.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if resp.ClientCACertificate != "" && !bytes.Equal(cas.clientPEM, fleetCA.ClientCACertificatePEM()) {
				t.Error("the relay's client CA is not the client CA")
			}
		})
	}
}

// FuzzCheckReplyCAs feeds hostile CA fields of a reply to the pinning
// check: it must never panic, and never accept a CA that the pinned CA did
// not sign.
func FuzzCheckReplyCAs(f *testing.F) {
	fleetCA, _, err := ca.LoadOrCreate(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	other, _, err := ca.LoadOrCreate(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	pinned := []*x509.Certificate{fleetCA.Certificate()}
	f.Add(string(fleetCA.AgentCACertificatePEM()), string(fleetCA.ClientCACertificatePEM()), "")
	f.Add(string(other.AgentCACertificatePEM()), string(other.ClientCACertificatePEM()), "")
	f.Add("", "", string(fleetCA.CertificatePEM()))
	f.Add("", "", string(other.CertificatePEM()))
	f.Add("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "", "")
	f.Fuzz(func(t *testing.T, agentCA, clientCA, legacy string) {
		resp := protocol.CertificateResponse{AgentCACertificate: agentCA, ClientCACertificate: clientCA, CACertificate: legacy}
		cas, err := checkReplyCAs(&resp, pinned)
		if err != nil {
			return
		}
		if bytes.Contains(cas.clientPEM, other.ClientCACertificatePEM()) || bytes.Contains(cas.clientPEM, other.CertificatePEM()) {
			t.Fatal("accepted the other fleet's CA for the relay")
		}
		for _, c := range cas.agent {
			if bytes.Equal(c.Raw, other.AgentCACertificate().Raw) || bytes.Equal(c.Raw, other.Certificate().Raw) {
				t.Fatal("accepted the other fleet's CA for the agent certificate")
			}
		}
	})
}
