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

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// TestAgentsCLI_DefaultDataDir runs `agents list` against a real server
// as operators do: on the server host from the directory holding data/
// (the default --data.dir of server, token create and cert issue too) with
// no credential flag; from another host, where no data/ is, with an admin
// certificate or token; and from another host with nothing, which says
// what to give.
func TestAgentsCLI_DefaultDataDir(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	if filepath.Base(s.DataDir) != "data" {
		t.Fatalf("server data directory %s is not the default's name", s.DataDir)
	}
	a := enroll(t, s, createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m"), protocol.RegisterRequest{Hostname: "e2e-listed", Address: "127.0.0.1", Port: 9956})
	admin := issueCert(t, s.DataDir, "ops", "admin")
	tokenFile := filepath.Join(t.TempDir(), "admin.token")
	if err := os.WriteFile(tokenFile, []byte(createToken(t, s.DataDir, "--scope=admin", "--ttl=10m")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	elsewhere := t.TempDir()

	for _, tc := range []struct {
		name, dir string
		args      []string
		wantErr   bool
		want      string
	}{
		{"server host, default data dir", filepath.Dir(s.DataDir), nil, false, a.ID},
		{"server host, default data dir and a certificate", filepath.Dir(s.DataDir),
			[]string{"--tls.cert-file=" + admin.CertFile, "--tls.key-file=" + admin.KeyFile}, false, a.ID},
		{"remote, certificate", elsewhere,
			[]string{"--tls.ca-file=" + admin.CAFile, "--tls.cert-file=" + admin.CertFile, "--tls.key-file=" + admin.KeyFile}, false, a.ID},
		{"remote, token", elsewhere, []string{"--tls.ca-file=" + admin.CAFile, "--token-file=" + tokenFile}, false, a.ID},
		{"remote, nothing", elsewhere, nil, true, "no server data directory at --data.dir=data (the default)"},
		{"remote, named data dir missing", elsewhere, []string{"--data.dir=data"}, true, "read CA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.CommandContext(t.Context(), binary, append(append([]string{"agents", "--server.url=" + s.URL, "-o", "json"}, tc.args...), "list")...)
			cmd.Dir = tc.dir
			out, err := cmd.CombinedOutput()
			if (err != nil) != tc.wantErr {
				t.Fatalf("agents list in %s: err %v, want error %v\n%s", tc.dir, err, tc.wantErr, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Errorf("agents list in %s says\n%s\nwant %q", tc.dir, out, tc.want)
			}
		})
	}
}
