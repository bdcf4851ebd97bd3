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

package server

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd"
)

// TestStatusPage_Consumers: the page lists who fetched which scrape shard
// and when, escapes what clients sent, and shows it only to readers who may
// see the fleet.
func TestStatusPage_Consumers(t *testing.T) {
	fetched := statusNow.Add(-90 * time.Second)
	log := httpsd.NewConsumerLog(nil, func() time.Time { return fetched })
	log.Record("cert:prometheus-1", "1/3", "shard=1&shards=3", http.StatusOK)
	log.Record("cert:prometheus-1", "1/3", "shard=1&shards=3", http.StatusNotModified)
	// A query string is whatever the client sent (the certificate name
	// comes from our CA, but the query does not).
	log.Record("cert:prometheus-2", "invalid", `shard=<script>alert(1)</script>"`, http.StatusBadRequest)
	reg := newFleet(t, nil)

	render := func(showFleet bool) string {
		p := &statusPage{
			registry: reg, now: func() time.Time { return statusNow }, logger: slog.New(slog.DiscardHandler),
			showFleet: func(*http.Request) bool { return showFleet }, consumers: log,
		}
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("status %d", rec.Code)
		}
		return rec.Body.String()
	}

	t.Run("reader", func(t *testing.T) {
		page := render(true)
		for _, want := range []string{
			"Prometheus servers",
			"<code>cert:prometheus-1</code>", "<td>1/3</td>", "<td>2</td>", "<td>304</td>", "1m30s ago",
			"<code>cert:prometheus-2</code>", "<td>invalid</td>", "<td>400</td>",
			"shard=&lt;script&gt;alert(1)&lt;/script&gt;&#34;",
		} {
			if !strings.Contains(page, want) {
				t.Errorf("page lacks %q", want)
			}
		}
		if strings.Contains(page, "<script>") {
			t.Error("a query string reached the page unescaped")
		}
		if i, j := strings.Index(page, "prometheus-1"), strings.Index(page, "prometheus-2"); i < 0 || j < i {
			t.Error("consumers not in order")
		}
		for _, external := range []string{"src=", "<link", "@import", "url("} {
			if strings.Contains(page, external) {
				t.Errorf("page loads something (%q)", external)
			}
		}
	})
	t.Run("anonymous", func(t *testing.T) {
		page := render(false)
		if strings.Contains(page, "prometheus-1") || strings.Contains(page, "Prometheus servers") {
			t.Error("consumers shown to a request that may not see the fleet")
		}
	})
	t.Run("nobody fetched", func(t *testing.T) {
		p := &statusPage{
			registry: reg, now: func() time.Time { return statusNow }, logger: slog.New(slog.DiscardHandler),
			showFleet: func(*http.Request) bool { return true }, consumers: httpsd.NewConsumerLog(nil, nil),
		}
		rec := httptest.NewRecorder()
		p.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
		if !strings.Contains(rec.Body.String(), "No http_sd fetches since the server started.") {
			t.Error("empty consumer log not explained")
		}
	})
}
