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
