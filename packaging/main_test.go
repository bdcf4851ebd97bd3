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
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// buildTimeout bounds building the binary, nfpm and the package.
const buildTimeout = 10 * time.Minute

// Set once by TestMain before any test runs, only read afterwards.
var (
	// root is the repository's root directory.
	root string
	// binary is baremetal_sd built as the release builds it.
	binary string
	// deb is the Debian package of this machine's architecture.
	deb string
)

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	dir, err := os.MkdirTemp("", "baremetal_sd-packaging-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "packaging:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	if err := build(dir); err != nil {
		fmt.Fprintln(os.Stderr, "packaging:", err)
		return 1
	}
	return m.Run()
}

// build compiles baremetal_sd like the release (.promu.yml: -trimpath, tags
// netgo and osusergo, no cgo) and nfpm from the tools module, and makes the
// package with packaging/build-deb.sh, the script `make package` runs.
func build(dir string) error {
	wd, err := os.Getwd()
	if err != nil {
		return fmt.Errorf("find repository root: %w", err)
	}
	root = filepath.Dir(wd)
	goTool := os.Getenv("GO") // the Makefile exports the go it uses
	if goTool == "" {
		goTool = "go"
	}
	ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
	defer cancel()
	run := func(env []string, name string, args ...string) error {
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
		}
		return nil
	}
	binary = filepath.Join(dir, "baremetal_sd")
	if err := run([]string{"CGO_ENABLED=0"}, goTool, "build", "-trimpath", "-tags", "netgo,osusergo", "-o", binary, "."); err != nil {
		return err
	}
	nfpm := filepath.Join(dir, "nfpm")
	if err := run([]string{"CGO_ENABLED=0"}, goTool, "build", "-C", "tools", "-o", nfpm, "github.com/goreleaser/nfpm/v2/cmd/nfpm"); err != nil {
		return err
	}
	out := filepath.Join(dir, "deb")
	if err := run([]string{"NFPM=" + nfpm, "TMPDIR=" + dir}, "packaging/build-deb.sh", runtime.GOARCH, binary, out); err != nil {
		return err
	}
	debs, err := filepath.Glob(filepath.Join(out, "baremetal-sd_*_"+runtime.GOARCH+".deb"))
	if err != nil || len(debs) != 1 {
		return errors.Join(fmt.Errorf("build-deb.sh made %v, want one package", debs), err)
	}
	deb = debs[0]
	return nil
}
