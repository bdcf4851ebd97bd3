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

package bench

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baremetal-sd/baremetal_sd/bench/synthetic"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/bolt"
)

// registryFile is the bolt file in the data dir (server.RegistryFile; the
// bench package does not import the server role).
const registryFile = "registry.db"

// PopulateConfig configures `bench populate`.
type PopulateConfig struct {
	DataDir     string
	Count       int
	Concurrency int
	Duration    time.Duration
	First       int
	Logger      *slog.Logger
}

// RunPopulate writes synthetic agents straight into the server's bolt
// registry. The server must be stopped (bolt locks the file); on its next
// start it loads them and gives each one TTL of grace.
func RunPopulate(ctx context.Context, cfg PopulateConfig, out io.Writer) error {
	if cfg.Count <= 0 || cfg.Concurrency <= 0 || cfg.Duration <= 0 {
		return fmt.Errorf("count, concurrency and duration must be positive")
	}
	path := filepath.Join(cfg.DataDir, registryFile)
	// Bolt locks the file: a running server makes this fail after the
	// store's lock timeout instead of writing behind its back.
	store, err := bolt.Open(path, bolt.Options{Logger: cfg.Logger})
	if err != nil {
		return fmt.Errorf("open registry (stop the server first): %w", err)
	}
	defer store.Close()

	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	now := time.Now()
	var (
		next   atomic.Int64
		ok     atomic.Int64
		wg     sync.WaitGroup
		errMu  sync.Mutex
		putErr error
	)
	start := time.Now()
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				n := int(next.Add(1) - 1)
				if n >= cfg.Count {
					return
				}
				if err := store.Put(ctx, synthetic.Agent(cfg.First+n, now)); err != nil {
					errMu.Lock()
					if putErr == nil {
						putErr = err
					}
					errMu.Unlock()
					cancel()
					return
				}
				ok.Add(1)
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	tb := &table{title: "bench populate"}
	tb.add("registry", "%s", path)
	tb.add("agents written", "%d of %d", ok.Load(), cfg.Count)
	tb.add("wall time", "%s (%.0f puts/s with %d writers)", wall.Round(time.Millisecond), float64(ok.Load())/wall.Seconds(), cfg.Concurrency)
	if err := tb.write(out); err != nil {
		return err
	}
	if putErr != nil {
		return fmt.Errorf("put agent: %w", putErr)
	}
	if ok.Load() < int64(cfg.Count) {
		return fmt.Errorf("wrote %d of %d agents before --duration ran out", ok.Load(), cfg.Count)
	}
	return nil
}
