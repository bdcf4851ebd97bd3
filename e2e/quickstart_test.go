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
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"testing"
	"time"
)

// TestQuickstart runs examples/quickstart.sh as a reader of the README
// would, checks that its Prometheus finds the agent's node exporter and the
// agent itself through http_sd and scrapes both, then presses Ctrl-C
// (SIGINT) and checks that every process stopped and the temporary
// directory is gone.
func TestQuickstart(t *testing.T) {
	t.Parallel()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(root, "examples", "quickstart.sh"))
	cmd.Env = append(os.Environ(), "BIN="+binary, "TMPDIR="+t.TempDir())
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	log := &logBuffer{}
	cmd.Stderr = log
	dumpOnFailure(t, "quickstart.sh", log)
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
	})

	// The script prints its temporary directory and Prometheus' address.
	dirRE := regexp.MustCompile(`files and logs in (\S+)\)`)
	promRE := regexp.MustCompile(`Prometheus targets\s+(http://127\.0\.0\.1:\d+)/targets`)
	var dir, prom string
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := sc.Text()
			fmt.Fprintln(log, line)
			if m := dirRE.FindStringSubmatch(line); m != nil {
				dir = m[1]
			}
			if m := promRE.FindStringSubmatch(line); m != nil {
				prom = m[1]
				close(ready)
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
		done <- cmd.Wait()
	}()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("quickstart.sh exited before it was ready: %v", err)
	case <-time.After(3 * time.Minute):
		t.Fatal("quickstart.sh did not print its URLs within 3 minutes")
	}
	if dir == "" {
		t.Fatal("quickstart.sh did not print its directory")
	}

	waitFor(t, 90*time.Second, func() error {
		health, err := quickstartTargets(t.Context(), prom)
		if err != nil {
			return err
		}
		if health["node"] != "up" || health["baremetal_sd_agent"] != "up" {
			return fmt.Errorf("targets by job: %v, want node and baremetal_sd_agent up", health)
		}
		return nil
	})

	if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		var ee *exec.ExitError
		interrupted := errors.As(err, &ee) && ee.ExitCode() == 130
		if err != nil && !interrupted {
			t.Errorf("quickstart.sh after Ctrl-C: %v, want exit status 130", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("quickstart.sh did not stop within a minute of Ctrl-C")
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("temporary directory %s still there after Ctrl-C (%v)", dir, err)
	}
	if _, err := quickstartTargets(t.Context(), prom); err == nil {
		t.Errorf("Prometheus at %s still answers after Ctrl-C", prom)
	}
}

// quickstartTargets maps each active target's job to its health.
func quickstartTargets(ctx context.Context, prom string) (map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, prom+"/api/v1/targets", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Data struct {
			ActiveTargets []struct {
				Labels map[string]string `json:"labels"`
				Health string            `json:"health"`
			} `json:"activeTargets"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, err
	}
	health := make(map[string]string)
	for _, tg := range body.Data.ActiveTargets {
		health[tg.Labels["job"]] = tg.Health
	}
	return health, nil
}
