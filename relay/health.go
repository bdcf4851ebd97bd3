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

package relay

import (
	"net/url"
	"sync"
	"time"
)

// health tracks whether an exporter's last relay succeeded, so that the
// agent logs the first failure and the recovery, not one line per scrape:
// a failing exporter must be visible outside Prometheus' 502.
type health struct {
	mu      sync.Mutex
	failing bool
	since   time.Time
}

// failed records a failed relay; a scraper that went away says nothing
// about the exporter.
func (e *exporter) failed(fe *fetchError) {
	if fe.reason == "canceled" {
		return
	}
	e.health.mu.Lock()
	first := !e.health.failing
	if first {
		e.health.failing, e.health.since = true, time.Now()
	}
	e.health.mu.Unlock()
	if first {
		e.relay.logger.Warn("Exporter is failing; Prometheus sees its relay answer 502 or 504 until it recovers",
			"exporter", e.cfg.Name, "url", redactURL(e.cfg.URL), "reason", fe.reason, "err", fe.err)
	}
}

// succeeded records a successful relay.
func (e *exporter) succeeded() {
	e.health.mu.Lock()
	recovered := e.health.failing
	since := e.health.since
	e.health.failing = false
	e.health.mu.Unlock()
	if recovered {
		e.relay.logger.Info("Exporter recovered", "exporter", e.cfg.Name, "url", redactURL(e.cfg.URL),
			"failing_for", time.Since(since).Round(time.Millisecond))
	}
}

// redactURL hides a password in an exporter URL for the log.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}
