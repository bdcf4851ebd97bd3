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
	"fmt"
	"log/slog"
	"time"

	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
)

// FileSDWriter writes the unfiltered http_sd target groups to a file for
// Prometheus' file_sd_configs. Writes are atomic (temporary file and rename)
// so Prometheus never reads half a file, and coalesced so a burst of
// registrations means one write.
type FileSDWriter struct {
	Path     string
	Cache    *Cache
	Registry *registry.Registry
	// Debounce is the quiet time collected before a write (1s).
	Debounce time.Duration
	// MaxDelay bounds how long changes wait for a quiet moment (10s): a
	// fleet that never stops changing, such as a mass enrollment, still
	// gets its file rewritten.
	MaxDelay time.Duration
	Metrics  *collector.Server
	Logger   *slog.Logger
}

// Run writes the file once, then after every change, until ctx ends.
func (f *FileSDWriter) Run(ctx context.Context) {
	debounce := f.Debounce
	if debounce <= 0 {
		debounce = time.Second
	}
	maxDelay := f.MaxDelay
	if maxDelay <= 0 {
		maxDelay = 10 * debounce
	}
	var written uint64
	var pendingSince time.Time // first change not written yet; zero if none
	first := true
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.Registry.Changed():
			if pendingSince.IsZero() {
				pendingSince = time.Now()
			}
			timer.Reset(min(debounce, time.Until(pendingSince.Add(maxDelay))))
		case <-timer.C:
			pendingSince = time.Time{}
			gen := f.Registry.Generation()
			if !first && gen == written {
				continue
			}
			if err := f.write(); err != nil {
				f.Logger.Error("Writing file_sd file failed", "path", f.Path, "err", err)
				timer.Reset(10 * debounce)
				continue
			}
			written, first = gen, false
		}
	}
}

// write writes the current groups.
func (f *FileSDWriter) write() error {
	body := f.Cache.Get(Filter{})
	if err := fileutil.WriteAtomicFunc(f.Path, 0o644, body.WriteJSON); err != nil {
		f.count("error")
		return fmt.Errorf("write file_sd file: %w", err)
	}
	f.count("success")
	return nil
}

func (f *FileSDWriter) count(result string) {
	if f.Metrics != nil {
		f.Metrics.FileSDWrites.WithLabelValues(result).Inc()
	}
}
