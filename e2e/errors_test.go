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
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// goTypeName matches a package-qualified Go type as the yaml decoder names
// it (relay.plain, web.TLSConfig, config.plain); file names such as
// listen.yml do not match.
var goTypeName = regexp.MustCompile(`\b[a-z][a-z0-9]*\.(plain|[A-Z]\w*)\b`)

// checkOperatorLanguage fails the test if msg names Go types or says its
// prefix twice ("web config: parse web config x: ...").
func checkOperatorLanguage(t *testing.T, msg string) {
	t.Helper()
	if m := goTypeName.FindString(msg); m != "" {
		t.Errorf("%q names the Go type %s", msg, m)
	}
	for _, leak := range []string{"relay.", "main.", "*", "!!", "yaml:", "time:", "unmarshal", "in type", "[]", "map["} {
		if strings.Contains(msg, leak) {
			t.Errorf("%q contains %q", msg, leak)
		}
	}
	// The prefixes are the parts before the first "line N: ". Each one's
	// first two words may not come back later.
	parts := strings.Split(msg, ": ")
	for i, p := range parts {
		if strings.HasPrefix(p, "line ") {
			break
		}
		words := strings.Fields(p)
		if len(words) > 2 {
			words = words[:2]
		}
		lead := strings.Join(words, " ")
		if rest := strings.Join(parts[i+1:], ": "); lead != "" && strings.Contains(rest, lead) {
			t.Errorf("%q says %q twice", msg, lead)
		}
	}
}

// failureMessage runs the binary with args, expects it to fail, and
// returns what it says: the err of the daemon's last error log line
// (--log.format=json) or, for a command, the last line on stderr.
func failureMessage(t *testing.T, daemon bool, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), cliTimeout)
	defer cancel()
	if daemon {
		args = append(args, "--log.format=json")
	}
	out, err := exec.CommandContext(ctx, binary, args...).CombinedOutput()
	if err == nil {
		t.Fatalf("baremetal_sd %s succeeded:\n%s", strings.Join(args, " "), out)
	}
	var msg string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if !daemon {
			msg = strings.TrimPrefix(line, "baremetal_sd: ")
			continue
		}
		var rec struct {
			Level string `json:"level"`
			Err   string `json:"err"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Level == "ERROR" && rec.Err != "" {
			msg = rec.Err
		}
	}
	if msg == "" {
		t.Fatalf("baremetal_sd %s says nothing:\n%s", strings.Join(args, " "), out)
	}
	return msg
}

// TestConfigErrors_SpeakOperatorLanguage starts the agent and the server
// with broken configuration files and gives the commands bad flag values:
// each error names the file, line and key or the flag, and neither the Go
// types the file is decoded into nor its own prefix twice.
func TestConfigErrors_SpeakOperatorLanguage(t *testing.T) {
	t.Parallel()
	const node = "exporters:\n  - name: node\n    url: http://127.0.0.1:9100/metrics\n"
	for _, tc := range []struct {
		name string
		// role is "agent" or "server" (started with file as the relay
		// config or the web config), or "" for a command with args.
		role, config, file string
		args               []string
		want               string
	}{
		{name: "relay: unknown exporter field", role: "agent", config: "relay", file: node + "    timout: 5s\n",
			want: `exporters.yml: line 4: unknown field "timout" in exporter "node"`},
		{name: "relay: unknown top-level field", role: "agent", config: "relay", file: "exporterz: []\n",
			want: `exporters.yml: line 1: unknown field "exporterz"`},
		{name: "relay: unknown HTTP client field", role: "agent", config: "relay", file: node + "    basic_auth:\n      usernme: a\n",
			want: `line 5: unknown field "usernme" in exporter "node"`},
		{name: "relay: list for a URL", role: "agent", config: "relay", file: "exporters:\n  - name: node\n    url: [a]\n",
			want: `line 3: expected a string, got a list in exporter "node"`},
		{name: "relay: field set twice", role: "agent", config: "relay", file: node + "    url: http://127.0.0.1:9101/metrics\n",
			want: `line 4: field "url" is set twice in exporter "node"`},
		{name: "relay: bad duration", role: "agent", config: "relay", file: node + "    timeout: soon\n",
			want: `exporter "node": not a valid duration string: "soon"`},
		{name: "relay: bad relabel action", role: "agent", config: "relay", file: node + "    metric_relabel_configs:\n      - action: drpo\n",
			want: `exporter "node": unknown relabel action "drpo"`},
		{name: "agent web config: unknown field", role: "agent", config: "web", file: "tls_server_config:\n  cert_fil: x\n",
			want: `listen.yml: line 2: unknown field "cert_fil"`},
		{name: "server web config: unknown field", role: "server", config: "web", file: "tls_server_config:\n  cert_fil: x\n",
			want: `listen.yml: line 2: unknown field "cert_fil"`},
		{name: "server web config: list for a mapping", role: "server", config: "web", file: "tls_server_config: [a]\n",
			want: `listen.yml: line 1: a list is not valid here`},
		{name: "server: bad duration flag", args: []string{"server", "--agent.ttl=soon"},
			want: `--agent.ttl: invalid duration "soon"`},
		{name: "agent: label without value", args: []string{"agent", "--discovery.url=https://127.0.0.1:1", "--agent.label=role"},
			want: `--agent.label: expected KEY=VALUE got 'role'`},
		{name: "token create: bad ttl", args: []string{"token", "create", "--ttl=1y"},
			want: `--ttl: unknown unit "y" in duration "1y"`},
		{name: "agents maintenance: bad state", args: []string{"agents", "maintenance", "web1", "maybe"},
			want: `<state>: enum value must be one of on,off, got 'maybe'`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			args := tc.args
			if tc.role != "" {
				path := filepath.Join(dir, map[string]string{"relay": "exporters.yml", "web": "listen.yml"}[tc.config])
				if err := os.WriteFile(path, []byte(tc.file), 0o600); err != nil {
					t.Fatal(err)
				}
				addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
				switch tc.role {
				case "agent":
					args = []string{"agent", "--discovery.url=https://127.0.0.1:1", "--agent.state-dir=" + filepath.Join(dir, "state"), "--web.listen-address=" + addr}
				default:
					args = []string{"server", "--data.dir=" + filepath.Join(dir, "data"), "--web.listen-address=" + addr}
				}
				if tc.config == "relay" {
					args = append(args, "--relay.config.file="+path)
				} else {
					args = append(args, "--web.config.file="+path)
				}
			}
			msg := failureMessage(t, tc.role != "", args...)
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q, want it to say %q", msg, tc.want)
			}
			checkOperatorLanguage(t, msg)
		})
	}
}
