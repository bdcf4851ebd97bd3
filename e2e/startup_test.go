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
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// startupCase is one run of the server or agent with one bad input.
type startupCase struct {
	name, role string
	// flags changes the role's base flags (see startupFlags); an empty
	// value removes one. It may write files into dir.
	flags func(t *testing.T, dir string) map[string]string
	// want are the parts of the error: the flag or file, and the cause.
	want []string
}

// startupFlags are flags under which the role starts and writes its data
// or state directory, dir/data or dir/state; each case changes one input.
// The agent's discovery URL has nobody listening: a bad input must stop
// it before it tries.
func startupFlags(t *testing.T, role, dir string) map[string]string {
	listen := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if role == "server" {
		return map[string]string{"data.dir": filepath.Join(dir, "data"), "web.listen-address": listen}
	}
	return map[string]string{
		"discovery.url":        "https://127.0.0.1:1",
		"discovery.token-file": filepath.Join(dir, "token"), // not there yet: the agent waits for it
		"agent.state-dir":      filepath.Join(dir, "state"),
		"agent.address":        "127.0.0.1",
		"web.listen-address":   listen,
	}
}

// startupArgs merges changes over the base flags of role.
func startupArgs(role string, base, changes map[string]string) []string {
	for k, v := range changes {
		base[k] = v
	}
	args := []string{role}
	for k, v := range base {
		if v != "" {
			args = append(args, "--"+k+"="+v)
		}
	}
	sort.Strings(args[1:])
	return args
}

// tree lists every path under dir, with the size of files.
func tree(t *testing.T, dir string) []string {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		paths = append(paths, fmt.Sprintf("%s %v %d", path, info.Mode(), info.Size()))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}

// TestStartup_BadInputWritesNothing: a server or agent started with a bad
// input (flag, file, directory, port) exits non-zero with an error that
// names the flag or the file, before it writes anything: its empty data or
// state directory stays empty, and nothing else changes beside it. First,
// the base flags of each role show that a start does write there.
func TestStartup_BadInputWritesNothing(t *testing.T) {
	t.Parallel()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	pki, other := newOperatorPKI(t), newOperatorPKI(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = taken.Close() })

	write := func(t *testing.T, dir, name, content string) string {
		t.Helper()
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	webConfig := func(content string) func(*testing.T, string) map[string]string {
		return func(t *testing.T, dir string) map[string]string {
			return map[string]string{"web.config.file": write(t, dir, "listen.yml", content)}
		}
	}
	tlsConfig := func(cert, key string) string {
		return fmt.Sprintf("tls_server_config:\n  cert_file: %s\n  key_file: %s\n", cert, key)
	}
	set := func(kv ...string) func(*testing.T, string) map[string]string {
		return func(_ *testing.T, dir string) map[string]string {
			m := map[string]string{}
			for i := 0; i < len(kv); i += 2 {
				m[kv[i]] = strings.ReplaceAll(kv[i+1], "DIR", dir)
			}
			return m
		}
	}
	common := []startupCase{
		{name: "web config missing", flags: set("web.config.file", "DIR/nope.yml"),
			want: []string{"--web.config.file", "nope.yml", "no such file"}},
		{name: "web config not YAML", flags: webConfig("tls_server_config: [\n"),
			want: []string{"--web.config.file", "listen.yml"}},
		{name: "web config certificate missing", flags: webConfig(tlsConfig("missing.crt", pki.KeyFile)),
			want: []string{"cert_file", "missing.crt", "no such file"}},
		{name: "web config certificate of another key", flags: webConfig(tlsConfig(pki.CertFile, other.KeyFile)),
			want: []string{"--web.config.file", "listen.yml", "private key does not match"}},
		{name: "web config client CA missing", flags: webConfig(tlsConfig(pki.CertFile, pki.KeyFile) + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: nope-ca.crt\n"),
			want: []string{"client_ca_file", "nope-ca.crt", "no such file"}},
		{name: "web config client auth type unknown", flags: webConfig(tlsConfig(pki.CertFile, pki.KeyFile) + "  client_auth_type: Sometimes\n"),
			want: []string{"--web.config.file", "Sometimes"}},
		{name: "port taken", flags: set("web.listen-address", taken.Addr().String()),
			want: []string{"--web.listen-address", "address already in use"}},
	}
	var cases []startupCase
	for _, role := range []string{"server", "agent"} {
		for _, c := range common {
			c.role = role
			cases = append(cases, c)
		}
	}
	cases = append(cases,
		startupCase{role: "server", name: "web config without TLS", flags: webConfig("http_server_config:\n  http2: true\n"),
			want: []string{"--web.config.file", "listen.yml", "TLS only"}},
		startupCase{role: "server", name: "shipped web config before the first start",
			flags: func(t *testing.T, dir string) map[string]string {
				// Beside the data directory, as its comment says.
				data, err := os.ReadFile(filepath.Join(root, "web-config.yml"))
				if err != nil {
					t.Fatal(err)
				}
				return map[string]string{"web.config.file": write(t, dir, "web-config.yml", string(data))}
			},
			want: []string{"--web.config.file", "server.crt", "start it once without this flag"}},
		startupCase{role: "server", name: "data dir is a file", flags: func(t *testing.T, dir string) map[string]string {
			return map[string]string{"data.dir": write(t, dir, "data-file", "")}
		}, want: []string{"--data.dir", "data-file", "not a directory"}},
		startupCase{role: "server", name: "file_sd directory missing", flags: set("sd.file.path", "DIR/missing/targets.json"),
			want: []string{"--sd.file.path", "missing", "no such file"}},
		startupCase{role: "server", name: "server name invalid", flags: set("tls.server-name", "bad name"),
			want: []string{"--tls.server-name", "bad name"}},
		startupCase{role: "server", name: "etcd without endpoints", flags: set("storage.backend", "etcd"),
			want: []string{"--etcd.endpoints"}},
		startupCase{role: "server", name: "etcd password file missing",
			flags: set("storage.backend", "etcd", "etcd.endpoints", "http://127.0.0.1:1", "etcd.username", "baremetal_sd", "etcd.password-file", "DIR/nope-password"),
			want:  []string{"--etcd.password-file", "nope-password", "no such file"}},
		startupCase{role: "server", name: "etcd CA file missing",
			flags: set("storage.backend", "etcd", "etcd.endpoints", "https://127.0.0.1:1", "etcd.ca-file", "DIR/nope-etcd-ca.crt"),
			want:  []string{"--etcd.ca-file", "nope-etcd-ca.crt"}},

		startupCase{role: "agent", name: "relay config missing", flags: set("relay.config.file", "DIR/nope-exporters.yml"),
			want: []string{"relay config", "nope-exporters.yml", "no such file"}},
		startupCase{role: "agent", name: "relay config invalid", flags: func(t *testing.T, dir string) map[string]string {
			return map[string]string{"relay.config.file": write(t, dir, "exporters.yml", "exporters:\n  - name: node\n    url: [a]\n")}
		}, want: []string{"exporters.yml", "line 3"}},
		startupCase{role: "agent", name: "discovery CA file missing", flags: set("discovery.ca-file", "DIR/nope-ca.crt"),
			want: []string{"--discovery.ca-file", "nope-ca.crt", "no such file"}},
		startupCase{role: "agent", name: "discovery CA file not PEM", flags: func(t *testing.T, dir string) map[string]string {
			return map[string]string{"discovery.ca-file": write(t, dir, "garbage.crt", "not a certificate\n")}
		}, want: []string{"--discovery.ca-file", "garbage.crt"}},
		startupCase{role: "agent", name: "discovery URL not https", flags: set("discovery.url", "http://127.0.0.1:1"),
			want: []string{"--discovery.url", "https"}},
		startupCase{role: "agent", name: "no token file and no certificate", flags: set("discovery.token-file", ""),
			want: []string{"--discovery.token-file", "token create"}},
		startupCase{role: "agent", name: "token file unreadable", flags: func(t *testing.T, dir string) map[string]string {
			path := filepath.Join(dir, "token-dir")
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
			return map[string]string{"discovery.token-file": path}
		}, want: []string{"--discovery.token-file", "token-dir"}},
		startupCase{role: "agent", name: "state dir is a file", flags: func(t *testing.T, dir string) map[string]string {
			return map[string]string{"agent.state-dir": write(t, dir, "state-file", "")}
		}, want: []string{"--agent.state-dir", "state-file", "not a directory"}},
	)

	// The base flags start each role, which then writes its directory:
	// what the cases below must not do.
	for _, role := range []string{"server", "agent"} {
		t.Run(role+": base flags write", func(t *testing.T) {
			dir := t.TempDir()
			base := startupFlags(t, role, dir)
			out := base["data.dir"] + base["agent.state-dir"]
			if err := os.Mkdir(out, 0o700); err != nil {
				t.Fatal(err)
			}
			log := &logBuffer{}
			dumpOnFailure(t, "baremetal_sd "+role, log)
			p := startProcess(t, "baremetal_sd "+role, log, binary, startupArgs(role, base, nil)...)
			t.Cleanup(func() { _ = p.kill() })
			waitFor(t, startTimeout, func() error {
				if p.exited() {
					t.Fatalf("%s exited: %v", role, p.err)
				}
				entries, err := os.ReadDir(out)
				if err != nil {
					return err
				}
				if len(entries) == 0 {
					return fmt.Errorf("%s has written nothing to %s", role, out)
				}
				return nil
			})
			if err := p.terminate(stopTimeout); err != nil {
				t.Errorf("stop %s: %v", role, err)
			}
		})
	}

	for _, tc := range cases {
		t.Run(tc.role+": "+tc.name, func(t *testing.T) {
			dir := t.TempDir()
			base := startupFlags(t, tc.role, dir)
			out := base["data.dir"] + base["agent.state-dir"]
			if err := os.Mkdir(out, 0o700); err != nil {
				t.Fatal(err)
			}
			args := startupArgs(tc.role, base, tc.flags(t, dir))
			before := tree(t, dir)
			msg := failureMessage(t, true, args...)
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			checkOperatorLanguage(t, msg)
			if entries, err := os.ReadDir(out); err != nil || len(entries) != 0 {
				t.Errorf("%s wrote to %s before failing: %v (%v)", tc.role, out, entries, err)
			}
			if after := tree(t, dir); !slices.Equal(before, after) {
				t.Errorf("%s changed files before failing:\nbefore %q\nafter  %q", tc.role, before, after)
			}
		})
	}
}
