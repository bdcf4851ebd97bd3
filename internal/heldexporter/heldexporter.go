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

// Package heldexporter is a test exporter whose scrapes are held until the
// test releases them, so that a scrape is in flight for exactly as long as a
// test needs (a graceful shutdown, a drain) instead of for a guessed time.
package heldexporter

import (
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// maxHold bounds how long a scrape is held if the test never releases it,
// so that a failed test cannot hang in the server's Close.
const maxHold = 30 * time.Second

// Exporter answers /metrics with one gauge once released.
type Exporter struct {
	// URL is the exporter's metrics URL.
	URL     string
	arrived chan struct{} // one value per scrape that reached it
	release chan struct{} // closed to let scrapes finish
}

// Start starts an exporter on loopback; it is released and closed when the
// test ends.
func Start(t testing.TB) *Exporter {
	t.Helper()
	e := &Exporter{arrived: make(chan struct{}, 16), release: make(chan struct{})}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case e.arrived <- struct{}{}:
		default:
		}
		timer := time.NewTimer(maxHold)
		defer timer.Stop()
		select {
		case <-e.release:
		case <-r.Context().Done():
			return
		case <-timer.C:
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = io.WriteString(w, "# HELP held_exporter_value A value from an exporter the test holds.\n# TYPE held_exporter_value gauge\nheld_exporter_value 42\n")
	}))
	t.Cleanup(func() {
		e.Release()
		srv.Close()
	})
	e.URL = srv.URL + "/metrics"
	return e
}

// Release lets held and future scrapes finish. It may be called repeatedly.
func (e *Exporter) Release() {
	select {
	case <-e.release:
	default:
		close(e.release)
	}
}

// WaitArrived waits up to timeout for a scrape to reach the exporter and
// fails the test otherwise.
func (e *Exporter) WaitArrived(t testing.TB, timeout time.Duration) {
	t.Helper()
	select {
	case <-e.arrived:
	case <-time.After(timeout):
		t.Fatal("the scrape did not reach the exporter")
	}
}
