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

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// health tracks whether an exporter's last relay succeeded, so that the
// agent logs the first failure and the recovery, not one line per scrape,
// and reports it in its heartbeats: a failing exporter must be visible
// outside Prometheus' 502.
type health struct {
	mu      sync.Mutex
	failing bool
	// since is when failing last changed, last when the last relay ended;
	// both zero until the first relay.
	since, last time.Time
	reason      string
}

// failed records a failed relay; a scraper that went away says nothing
// about the exporter.
func (e *exporter) failed(fe *fetchError) {
	if fe.reason == "canceled" {
		return
	}
	now := time.Now()
	e.health.mu.Lock()
	first := !e.health.failing
	if first {
		e.health.failing, e.health.since = true, now
	}
	e.health.last = now
	e.health.reason = protocol.SanitizeReason(fe.reason + ": " + fe.err.Error())
	e.health.mu.Unlock()
	if first {
		e.relay.logger.Warn("Exporter is failing; Prometheus sees its relay answer 502 or 504 until it recovers",
			"exporter", e.cfg.Name, "url", redactURL(e.cfg.URL), "reason", fe.reason, "err", fe.err)
	}
}

// succeeded records a successful relay.
func (e *exporter) succeeded() {
	now := time.Now()
	e.health.mu.Lock()
	recovered := e.health.failing
	since := e.health.since
	if recovered || since.IsZero() {
		e.health.since = now
	}
	e.health.failing, e.health.last, e.health.reason = false, now, ""
	e.health.mu.Unlock()
	if recovered {
		e.relay.logger.Info("Exporter recovered", "exporter", e.cfg.Name, "url", redactURL(e.cfg.URL),
			"failing_for", time.Since(since).Round(time.Millisecond))
	}
}

// Health reports each exporter's last relay result, in configuration
// order, as heartbeats carry it: unknown until the first relay.
func (r *Relay) Health() []protocol.ExporterHealth {
	out := make([]protocol.ExporterHealth, len(r.names))
	for i, name := range r.names {
		e := r.exporters[name]
		e.health.mu.Lock()
		h := protocol.ExporterHealth{Name: name, State: protocol.ExporterUp, Reason: e.health.reason, Since: e.health.since, LastResult: e.health.last}
		if e.health.failing {
			h.State = protocol.ExporterDown
		}
		if h.LastResult.IsZero() {
			h.State = protocol.ExporterUnknown
		}
		e.health.mu.Unlock()
		out[i] = h
	}
	return out
}

// InheritHealth takes over the health of the exporters old relayed under
// the same name, for a relay that replaces old on a reload: a reload
// neither forgets a failing exporter nor logs its failure again.
func (r *Relay) InheritHealth(old *Relay) {
	for name, e := range r.exporters {
		o, ok := old.exporters[name]
		if !ok {
			continue
		}
		o.health.mu.Lock()
		failing, since, last, reason := o.health.failing, o.health.since, o.health.last, o.health.reason
		o.health.mu.Unlock()
		e.health.mu.Lock()
		if e.health.last.IsZero() {
			e.health.failing, e.health.since, e.health.last, e.health.reason = failing, since, last, reason
		}
		e.health.mu.Unlock()
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
