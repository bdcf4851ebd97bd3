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

package packaging

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v2"

	"github.com/baremetal-sd/baremetal_sd/internal/clihelp"
	"github.com/baremetal-sd/baremetal_sd/relay"
)

// cloudConfig is the part of examples/cloud-init.yaml the test reads.
type cloudConfig struct {
	Packages   []string `yaml:"packages"`
	WriteFiles []struct {
		Path        string `yaml:"path"`
		Owner       string `yaml:"owner"`
		Permissions string `yaml:"permissions"`
		Defer       bool   `yaml:"defer"`
		Content     string `yaml:"content"`
	} `yaml:"write_files"`
	RunCmd [][]string `yaml:"runcmd"`
}

// TestCloudInit_Schema validates examples/cloud-init.yaml with Debian's
// cloud-init, and a copy with a misspelled key to show that the validator
// would catch one.
func TestCloudInit_Schema(t *testing.T) {
	cloudInit, err := exec.LookPath("cloud-init")
	if err != nil {
		t.Fatal("cloud-init not found: run scripts/install-test-deps.sh (make test does)")
	}
	example := readFile(t, filepath.Join(root, "examples", "cloud-init.yaml"))
	for _, tc := range []struct {
		name    string
		data    []byte
		wantErr bool
	}{
		{"example", example, false},
		{"misspelled key", []byte(strings.Replace(string(example), "permissions:", "permission:", 1)), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "user-data.yaml")
			if err := os.WriteFile(path, tc.data, 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(cloudInit, "schema", "--config-file", path).CombinedOutput()
			if (err != nil) != tc.wantErr {
				t.Fatalf("cloud-init schema: %v, want error %v\n%s", err, tc.wantErr, out)
			}
		})
	}
}

// TestCloudInit_MatchesPackage checks what cloud-init's schema does not:
// that the example configures the package the way the package reads its
// configuration. The files it writes are the ones the agent's unit and
// default flags name, the flags exist, the relay configuration loads, the
// token is readable by the agent and no one else, and it starts the unit
// the package ships.
func TestCloudInit_MatchesPackage(t *testing.T) {
	var cfg cloudConfig
	data := readFile(t, filepath.Join(root, "examples", "cloud-init.yaml"))
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	// cloud-init 22.4's schema lets unknown top-level keys pass: a typo
	// there would silently skip a module.
	var top map[string]any
	if err := yaml.Unmarshal(data, &top); err != nil {
		t.Fatal(err)
	}
	for k := range top {
		if !slices.Contains([]string{"apt", "packages", "write_files", "runcmd"}, k) {
			t.Errorf("top-level key %q is not one the example means to use", k)
		}
	}
	if !slices.Contains(cfg.Packages, "baremetal-sd") {
		t.Errorf("packages %v lack baremetal-sd", cfg.Packages)
	}

	files := make(map[string]int)
	for i, f := range cfg.WriteFiles {
		files[f.Path] = i
		// Written after the package's installation: its users exist and its
		// defaults are not written over the operator's.
		if !f.Defer {
			t.Errorf("%s: want defer: true", f.Path)
		}
	}
	file := func(path string) (string, string, string) {
		t.Helper()
		i, ok := files[path]
		if !ok {
			t.Fatalf("the example writes no %s", path)
		}
		f := cfg.WriteFiles[i]
		return f.Content, f.Owner, f.Permissions
	}

	// The agent's flags, as the package's unit runs them.
	defaults, _, _ := file("/etc/default/baremetal_sd-agent")
	args := argsOf(t, defaults)
	agentHelp, err := clihelp.Help(context.Background(), binary, "agent")
	if err != nil {
		t.Fatal(err)
	}
	known := clihelp.Flags(agentHelp)
	flags := make(map[string]string)
	for _, a := range args {
		name, value, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !slices.Contains(known, name) {
			t.Errorf("ARGS has --%s, which `baremetal_sd agent` does not know", name)
		}
		flags[name] = value
	}

	unit := string(readFile(t, filepath.Join(root, "examples", "systemd", "baremetal_sd-agent.service")))
	tokenPath := flags["discovery.token-file"]
	if !strings.Contains(unit, "ConditionPathExists=|"+tokenPath+"\n") {
		t.Errorf("the agent unit does not start on %s, the token the example writes", tokenPath)
	}
	if _, owner, perm := file(tokenPath); owner != "root:baremetal_sd-agent" || perm != "0640" {
		t.Errorf("token %s is %s %s, want root:baremetal_sd-agent 0640", tokenPath, owner, perm)
	}
	file(flags["discovery.ca-file"])
	relayYAML, _, _ := file(flags["relay.config.file"])
	if _, err := relay.ParseConfig([]byte(relayYAML)); err != nil {
		t.Errorf("relay configuration: %v", err)
	}

	started := false
	for _, c := range cfg.RunCmd {
		if len(c) == 3 && c[0] == "systemctl" && (c[1] == "restart" || c[1] == "start") && c[2] == "baremetal_sd-agent.service" {
			started = true
		}
	}
	if !started {
		t.Errorf("runcmd %q does not start baremetal_sd-agent.service", cfg.RunCmd)
	}
}

// TestPackage_DefaultFlags checks that the /etc/default files the package
// ships set only flags their commands have.
func TestPackage_DefaultFlags(t *testing.T) {
	for _, tc := range []struct{ file, command string }{
		{"baremetal_sd-server", "server"},
		{"baremetal_sd-agent", "agent"},
	} {
		t.Run(tc.file, func(t *testing.T) {
			help, err := clihelp.Help(context.Background(), binary, tc.command)
			if err != nil {
				t.Fatal(err)
			}
			known := clihelp.Flags(help)
			args := argsOf(t, string(readFile(t, filepath.Join(root, "packaging", "default", tc.file))))
			if len(args) == 0 {
				t.Fatal("ARGS is empty")
			}
			for _, a := range args {
				name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
				if !slices.Contains(known, name) {
					t.Errorf("ARGS has --%s, which `baremetal_sd %s` does not know", name, tc.command)
				}
			}
		})
	}
}

// argsOf returns $ARGS of an environment file, split at white space as
// systemd splits an unquoted $ARGS.
func argsOf(t *testing.T, envFile string) []string {
	t.Helper()
	out, err := exec.Command("sh", "-c", `eval "$1" && printf %s "$ARGS"`, "sh", envFile).Output()
	if err != nil {
		t.Fatalf("read ARGS: %v", err)
	}
	return strings.Fields(string(out))
}
