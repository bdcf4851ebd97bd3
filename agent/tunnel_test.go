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
	"crypto/tls"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	certauth "github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/internal/testca"
)

// TestTunnelTLS_RefusesAnImpostor: a peer whose certificate the pinned CA
// signed but whose role is not server (as a 0.1.0 agent certificate, which
// the server CA signed directly) never gets the tunnel; a serving
// certificate of the same CA does.
func TestTunnelTLS_RefusesAnImpostor(t *testing.T) {
	root := testca.New(t, "root")
	roots := root.Pool()
	leaf := func(role certauth.Role) tls.Certificate {
		return root.Issue(t, testca.Leaf{
			CommonName: "peer", OrganizationalUnit: []string{certauth.RoleOU(role)},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, Usage: testca.ServerAuth | testca.ClientAuth,
		}).TLS()
	}
	for _, tt := range []struct {
		role certauth.Role
		ok   bool
	}{{certauth.RoleAgent, false}, {certauth.RoleDiscovery, false}, {certauth.RoleServer, true}} {
		t.Run(string(tt.role), func(t *testing.T) {
			var reached atomic.Int32
			srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { reached.Add(1) }))
			srv.TLS = &tls.Config{Certificates: []tls.Certificate{leaf(tt.role)}}
			srv.StartTLS()
			defer srv.Close()
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: tunnelTLS(roots, nil)}}
			defer c.CloseIdleConnections()
			resp, err := c.Get(srv.URL)
			if err == nil {
				resp.Body.Close()
			}
			switch {
			case tt.ok && err != nil:
				t.Fatalf("the server refused: %v", err)
			case !tt.ok && (err == nil || !strings.Contains(err.Error(), string(tt.role))):
				t.Fatalf("a peer with role %s: err %v, want a refusal naming the role", tt.role, err)
			case !tt.ok && reached.Load() != 0:
				t.Fatal("the impostor received a request")
			}
		})
	}
}
