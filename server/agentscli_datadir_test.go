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

package server

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
)

// TestAgentsCLI_DefaultDataDir: the default --data.dir is used where it
// holds a server CA, as on the server host, and ignored elsewhere, so that
// a certificate or token with the system roots works as it did without a
// default; a data directory the operator names must be there.
func TestAgentsCLI_DefaultDataDir(t *testing.T) {
	serverDir := filepath.Join(t.TempDir(), "data")
	if _, _, err := ca.LoadOrCreate(serverDir); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.LoadOrCreateTokenKey(serverDir); err != nil {
		t.Fatal(err)
	}
	admin := t.TempDir()
	if err := IssueClientCert(serverDir, "ops", ca.RoleAdmin, time.Hour, admin); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// A directory named like the default, as one may be anywhere, that is
	// not a server's.
	unrelated := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(unrelated, 0o700); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "data")

	for _, tc := range []struct {
		name string
		cli  AgentsCLI
		// wantToken: "minted" (a JWT from the data dir's key), a literal
		// token, or "" for none; wantServerCA: the server CA is trusted
		// rather than the system roots; wantErr: the error says this.
		wantToken    string
		wantServerCA bool
		wantErr      string
	}{
		{name: "default on the server host mints a token", cli: AgentsCLI{DataDir: serverDir, DataDirIsDefault: true},
			wantToken: "minted", wantServerCA: true},
		{name: "default on the server host with a certificate", cli: AgentsCLI{DataDir: serverDir, DataDirIsDefault: true, CertFile: filepath.Join(admin, "ops.crt"), KeyFile: filepath.Join(admin, "ops.key")},
			wantServerCA: true},
		{name: "default missing, remote with a certificate and system roots", cli: AgentsCLI{DataDir: missing, DataDirIsDefault: true, CertFile: filepath.Join(admin, "ops.crt"), KeyFile: filepath.Join(admin, "ops.key")}},
		{name: "default missing, remote with a certificate and its CA", cli: AgentsCLI{DataDir: missing, DataDirIsDefault: true, CAFile: filepath.Join(admin, "ca.crt"), CertFile: filepath.Join(admin, "ops.crt"), KeyFile: filepath.Join(admin, "ops.key")},
			wantServerCA: true},
		{name: "default missing, remote with a token", cli: AgentsCLI{DataDir: missing, DataDirIsDefault: true, TokenFile: tokenFile},
			wantToken: "from-file"},
		{name: "default not a server's, remote with a token", cli: AgentsCLI{DataDir: unrelated, DataDirIsDefault: true, TokenFile: tokenFile},
			wantToken: "from-file"},
		{name: "default missing, no credentials", cli: AgentsCLI{DataDir: missing, DataDirIsDefault: true},
			wantErr: "no server data directory at --data.dir=" + missing + " (the default)"},
		{name: "default not a server's, no credentials", cli: AgentsCLI{DataDir: unrelated, DataDirIsDefault: true},
			wantErr: "--tls.cert-file/--tls.key-file or --token-file"},
		{name: "named data dir", cli: AgentsCLI{DataDir: serverDir},
			wantToken: "minted", wantServerCA: true},
		{name: "named data dir missing", cli: AgentsCLI{DataDir: missing},
			wantErr: "read CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ac, err := tc.cli.client()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one saying %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			switch tc.wantToken {
			case "minted":
				if strings.Count(ac.Token, ".") != 2 {
					t.Errorf("token %q, want one minted from the data directory", ac.Token)
				}
			default:
				if ac.Token != tc.wantToken {
					t.Errorf("token %q, want %q", ac.Token, tc.wantToken)
				}
			}
			tlsCfg := ac.HTTPClient.Transport.(*http.Transport).TLSClientConfig
			if got := tlsCfg.RootCAs != nil; got != tc.wantServerCA {
				t.Errorf("trusts the server CA: %v, want %v (false: the system roots)", got, tc.wantServerCA)
			}
			if got, want := len(tlsCfg.Certificates) == 1, tc.cli.CertFile != ""; got != want {
				t.Errorf("client certificate: %v, want %v", got, want)
			}
		})
	}
}
