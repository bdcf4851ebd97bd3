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

package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// The load generator is a command of its own (bench/cmd/baremetal_sd-bench):
// the release binary neither offers its commands nor links its code.
func TestRun_ReleaseBinaryHasNoLoadGenerator(t *testing.T) {
	for _, args := range [][]string{{"bench", "register"}, {"register"}, {"httpsd"}} {
		if code := run(args); code != 2 {
			t.Errorf("run(%q) = %d, want 2 (unknown command)", args, code)
		}
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go not on PATH: %v", err)
	}
	out, err := exec.Command(goBin, "list", "-deps", "-f", "{{.ImportPath}}", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	deps := strings.Fields(string(out))
	if slices.Contains(deps, "github.com/baremetal-sd/baremetal_sd/bench") {
		t.Error("the release binary links the load generator package bench")
	}
}

// The agent runs on every host: its packages (and the relay and the
// discovery client it is built from) must not drag in the server's storage
// backends. A new import of the registry from the agent's side shows up here
// rather than as a bigger binary nobody notices.
func TestAgentPackages_DoNotLinkServerStorage(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("go not on PATH: %v", err)
	}
	// go.etcd.io/ covers the etcd client and bbolt.
	forbidden := []string{"go.etcd.io/", "google.golang.org/grpc"}
	// The server's side of discovery: the registry, http_sd and the API,
	// and what they share.
	serverPkgs := []string{
		"github.com/baremetal-sd/baremetal_sd/discovery",
		"github.com/baremetal-sd/baremetal_sd/discovery/registry",
		"github.com/baremetal-sd/baremetal_sd/discovery/httpsd",
		"github.com/baremetal-sd/baremetal_sd/discovery/api",
	}
	tests := []struct {
		name string
		pkgs []string
	}{
		{"agent", []string{"./agent/..."}},
		{"relay", []string{"./relay/..."}},
		{"discovery client and protocol", []string{"./discovery/client/...", "./discovery/protocol/..."}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"list", "-deps", "-f", "{{.ImportPath}}"}, tt.pkgs...)
			out, err := exec.Command(goBin, args...).Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", strings.Join(tt.pkgs, " "), err)
			}
			deps := strings.Fields(string(out))
			if len(deps) == 0 {
				t.Fatal("go list -deps listed nothing")
			}
			for _, server := range serverPkgs {
				if slices.Contains(deps, server) {
					t.Errorf("%s depends on the server package %s", strings.Join(tt.pkgs, " "), server)
				}
			}
			for _, dep := range deps {
				for _, bad := range forbidden {
					if strings.HasPrefix(dep, bad) {
						t.Errorf("%s depends on %s", strings.Join(tt.pkgs, " "), dep)
					}
				}
			}
			if !slices.Contains(deps, "github.com/baremetal-sd/baremetal_sd/discovery/protocol") {
				t.Errorf("%s does not depend on discovery/protocol; is the package list right?", strings.Join(tt.pkgs, " "))
			}
		})
	}
}
