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

package httpsd

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd/httpsdtest"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry/registrytest"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
)

// startFileSD runs a FileSDWriter over a registry until the test ends.
func startFileSD(t *testing.T, r *registry.Registry, debounce, maxDelay time.Duration) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "targets.json")
	w := &FileSDWriter{Path: path, Cache: NewCache(r, nil), Registry: r, Debounce: debounce, MaxDelay: maxDelay}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return path
}

// fileGroups reads the file_sd file, or returns -1 while it is missing.
func fileGroups(t *testing.T, path string) int {
	t.Helper()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return -1
	}
	if err != nil {
		t.Fatal(err)
	}
	var groups []httpsdtest.TargetGroup
	if err := json.Unmarshal(data, &groups); err != nil {
		t.Fatalf("file_sd file is not a complete JSON array: %v", err)
	}
	return len(groups)
}

func waitGroups(t *testing.T, path string, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n := fileGroups(t, path)
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("file_sd file has %d groups after %s, want %d", n, timeout, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFileSDWriter_WritesAtStartAndOnChange(t *testing.T) {
	r := newTestRegistry(t, memory.New(), registrytest.NewClock())
	path := startFileSD(t, r, 20*time.Millisecond, 0)
	waitGroups(t, path, 0, 5*time.Second)
	mustPut(t, r, testAgent("a"))
	waitGroups(t, path, 2, 5*time.Second) // the agent's own metrics and node
	if err := r.Delete(context.Background(), "a"); err != nil {
		t.Fatal(err)
	}
	waitGroups(t, path, 0, 5*time.Second)
}

// TestFileSDWriter_ChurnDoesNotStarveWrites: changes arriving faster than
// the debounce still reach the file within MaxDelay instead of waiting for
// a quiet moment that never comes.
func TestFileSDWriter_ChurnDoesNotStarveWrites(t *testing.T) {
	r := newTestRegistry(t, memory.New(), registrytest.NewClock())
	const debounce = 200 * time.Millisecond
	path := startFileSD(t, r, debounce, 4*debounce)
	waitGroups(t, path, 0, 5*time.Second)
	// One registration every debounce/4, so the writer never sees a quiet
	// debounce; bounded to 300 changes.
	for i := range 300 {
		mustPut(t, r, testAgent(fmt.Sprintf("a%03d", i)))
		if n := fileGroups(t, path); n > 0 {
			return // written while the churn went on
		}
		time.Sleep(debounce / 4)
	}
	t.Fatal("file_sd file never rewritten while the registry kept changing")
}
