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
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// TestAgentsCLI_HostnamesAndHints: the agents command takes a hostname
// where it takes an id, lists the candidates when the name is ambiguous,
// and names --server.url when nothing listens there.
func TestAgentsCLI_HostnamesAndHints(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	enrollTok := createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m")
	ids := map[string][]string{}
	for _, host := range []string{"web1", "dup", "dup"} {
		a := enroll(t, s, enrollTok, protocol.RegisterRequest{Hostname: host, Address: "127.0.0.1", Port: 9956})
		ids[host] = append(ids[host], a.ID)
	}
	run := func(args ...string) (string, error) {
		out, err := exec.CommandContext(t.Context(), binary, append([]string{"agents", "--data.dir=" + s.DataDir, "--server.url=" + s.URL}, args...)...).CombinedOutput()
		return string(out), err
	}
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr bool
		want    []string
	}{
		{"hostname", []string{"maintenance", "web1", "on"}, false, []string{ids["web1"][0], "maintenance"}},
		{"id", []string{"maintenance", ids["web1"][0], "off"}, false, []string{ids["web1"][0]}},
		{"ambiguous hostname", []string{"revoke", "dup"}, true, []string{`2 agents have hostname "dup"`, ids["dup"][0], ids["dup"][1]}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(tc.args...)
			if (err != nil) != tc.wantErr {
				t.Fatalf("agents %s: err %v, want error %v\n%s", strings.Join(tc.args, " "), err, tc.wantErr, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}

	t.Run("connection refused", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		_ = l.Close() // nothing listens there now
		out, err := exec.CommandContext(t.Context(), binary, "agents", "--data.dir="+s.DataDir, "--server.url=https://"+addr, "list").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "--server.url") {
			t.Errorf("agents list against a closed port: %v\n%s", err, out)
		}
	})
}

func TestTokenCreate_OutputFileIsPrivate(t *testing.T) {
	t.Parallel()
	s := startServer(t)
	path := filepath.Join(t.TempDir(), "enroll.token")
	out := runCLI(t, "token", "create", "--data.dir="+s.DataDir, "--output="+path)
	if strings.TrimSpace(out) != "" {
		t.Errorf("token create --output printed %q; the token belongs in the file only", out)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode %o, want 600", fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(strings.TrimSpace(string(data)), "."); n != 2 {
		t.Errorf("token file does not hold a JWT: %q", data)
	}
}

// TestHelp_SaysWhatOperatorsNeed: the help of the release binary says
// the listeners speak TLS only, shows defaults and lists -o's values.
func TestHelp_SaysWhatOperatorsNeed(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cmd  string
		want []string
	}{
		{"server", []string{"over TLS only"}},
		{"agent", []string{"over TLS only", "default: on", "web.enable-lifecycle"}},
		{"agents", []string{"table or json"}},
		{"token", []string{"mode 0600"}},
	} {
		t.Run(tc.cmd, func(t *testing.T) {
			args := []string{"help", tc.cmd}
			if tc.cmd == "token" {
				args = append(args, "create")
			}
			out, err := exec.CommandContext(t.Context(), binary, args...).CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			help := strings.Join(strings.Fields(string(out)), " ")
			for _, w := range tc.want {
				if !strings.Contains(help, w) {
					t.Errorf("help %s lacks %q:\n%s", tc.cmd, w, out)
				}
			}
			if strings.Contains(help, "vsock") {
				t.Errorf("help %s offers vsock, which the roles do not serve:\n%s", tc.cmd, out)
			}
		})
	}
}
