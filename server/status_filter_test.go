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
	"context"
	"crypto/sha256"
	"encoding/base64"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
)

// checkPage asserts what a rendered page holds and lacks.
func checkPage(t *testing.T, rec *httptest.ResponseRecorder, status int, contains, absent []string) {
	t.Helper()
	if rec.Code != status {
		t.Fatalf("status %d, want %d: %s", rec.Code, status, rec.Body)
	}
	body := rec.Body.String()
	for _, s := range contains {
		if !strings.Contains(body, s) {
			t.Errorf("page lacks %q", s)
		}
	}
	for _, s := range absent {
		if strings.Contains(body, s) {
			t.Errorf("page contains %q", s)
		}
	}
}

func TestStatusPage_Filters(t *testing.T) {
	fleet := newFleet(t, []fleetAgent{
		{id: "a1", host: "db1.example.com", labels: map[string]string{"role": "db"}},
		{id: "a2", host: "DB2.example.com", labels: map[string]string{"role": "db", "dc": "fra"}},
		{id: "a3", host: "web1.example.com", labels: map[string]string{"role": "web"}},
		{id: "a4", host: "web2.example.com", maint: true},
	})
	fleet.ReportHealth("a3", []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterDown, Reason: "connect: upstream unreachable: connection refused"}})
	// A hostile agent's reason passes validation (no control characters)
	// and must stay text.
	fleet.ReportHealth("a4", []protocol.ExporterHealth{{Name: "node", State: protocol.ExporterUnknown, Reason: `<img src=x onerror=alert(1)>`}})
	tests := []struct {
		name, target string
		anonymous    bool
		status       int
		contains     []string
		absent       []string
	}{
		{
			name: "hostname part, any case", target: "/?host=db", status: http.StatusOK,
			contains: []string{"db1.example.com", "DB2.example.com", `name="host" value="db"`, "<b>4</b>all agents"},
			absent:   []string{"web1.example.com", "web2.example.com"},
		},
		{
			name: "label", target: "/?label=role%3Ddb", status: http.StatusOK,
			contains: []string{"db1.example.com", "DB2.example.com", `value="role=db"`},
			absent:   []string{"web1.example.com"},
		},
		{
			name: "an exporter down", target: "/?exporters=down", status: http.StatusOK,
			contains: []string{"web1.example.com", "connect: upstream unreachable: connection refused", `class="exp-down"`, `value="down" checked`},
			absent:   []string{"db1.example.com", "web2.example.com"},
		},
		{
			name: "state links keep the other filters", target: "/?host=web&state=maintenance", status: http.StatusOK,
			contains: []string{"web2.example.com", `href="/?host=web&amp;state=healthy"`, `class="count" href="/?host=web"`},
			absent:   []string{"web1.example.com"},
		},
		{
			name: "a hostile reason is text", target: "/?host=web2", status: http.StatusOK,
			contains: []string{"node: &lt;img src=x onerror=alert(1)&gt;"},
			absent:   []string{"<img"},
		},
		{
			name: "nothing matches", target: "/?host=nosuch", status: http.StatusOK,
			contains: []string{"No agents match the filters."},
			absent:   []string{"token create"},
		},
		{
			name: "hostile filter values are text", target: "/?host=%22%3E%3Cscript%3Ex%3C/script%3E", status: http.StatusOK,
			contains: []string{`value="&#34;&gt;&lt;script&gt;x&lt;/script&gt;"`},
			absent:   []string{"<script>"},
		},
		{
			name: "anonymous: filters do not probe the fleet", target: "/?host=db1", anonymous: true, status: http.StatusOK,
			contains: []string{"The agent list needs credentials"},
			absent:   []string{"db1.example.com", "matching"},
		},
		{name: "label without a value", target: "/?label=role", status: http.StatusBadRequest, contains: []string{"label: use name=value"}},
		{name: "label with a reserved name", target: "/?label=__name__%3Dx", status: http.StatusBadRequest, contains: []string{"reserved"}},
		{name: "label value too long", target: "/?label=a%3D" + strings.Repeat("x", protocol.MaxLabelValueLen+1), status: http.StatusBadRequest, contains: []string{"longer than"}},
		{name: "host too long", target: "/?host=" + strings.Repeat("h", maxHostFilter+1), status: http.StatusBadRequest, contains: []string{"at most 253 bytes"}},
		{name: "host not UTF-8", target: "/?host=%ff", status: http.StatusBadRequest, contains: []string{"UTF-8"}},
		{name: "unknown exporter filter", target: "/?exporters=up", status: http.StatusBadRequest, contains: []string{"the only value is down"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkPage(t, serveStatusAs(t, fleet, tt.target, !tt.anonymous), tt.status, tt.contains, tt.absent)
		})
	}
}

// TestStatusPage_Refresh: auto-refresh is a meta refresh that the page's
// links and filter form keep, off unless chosen, from a bounded set.
func TestStatusPage_Refresh(t *testing.T) {
	fleet := newFleet(t, []fleetAgent{{id: "a1", host: "db1.example.com"}})
	tests := []struct {
		name, target     string
		status           int
		contains, absent []string
	}{
		{
			name: "off by default", target: "/", status: http.StatusOK,
			contains: []string{`<a href="/" class="selected" aria-current="true">off</a>`, `<a href="/?refresh=30">30s</a>`, `<a href="/?refresh=300">5m</a>`},
			absent:   []string{"http-equiv", `name="refresh"`},
		},
		{
			name: "on, kept by links and the form", target: "/?refresh=30&host=db", status: http.StatusOK,
			contains: []string{
				`<meta http-equiv="refresh" content="30">`, `<input type="hidden" name="refresh" value="30">`,
				`href="/?host=db&amp;refresh=30&amp;state=healthy"`, `<a href="/?host=db">off</a>`, "refreshes every 30 s",
			},
		},
		{name: "explicitly off", target: "/?refresh=off", status: http.StatusOK, absent: []string{"http-equiv"}},
		{name: "not a choice", target: "/?refresh=1", status: http.StatusBadRequest, contains: []string{"refresh: use off or one of"}},
		{name: "not a number", target: "/?refresh=%3Cx", status: http.StatusBadRequest, absent: []string{"<x"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkPage(t, serveStatus(t, fleet, tt.target), tt.status, tt.contains, tt.absent)
		})
	}
}

// TestStatusPage_ContentSecurityPolicy: the page works under a policy that
// allows no script and no external asset: it has no script, and its one
// inline style is allowed by hash. A policy from the web config is kept.
func TestStatusPage_ContentSecurityPolicy(t *testing.T) {
	fleet := newFleet(t, []fleetAgent{{id: "a1", host: "db1.example.com"}})
	rec := serveStatus(t, fleet, "/?refresh=30")
	csp := rec.Header().Get("Content-Security-Policy")
	body := rec.Body.String()
	style := regexp.MustCompile(`(?s)<style>(.*?)</style>`).FindAllStringSubmatch(body, -1)
	if len(style) != 1 {
		t.Fatalf("%d style elements, want 1", len(style))
	}
	sum := sha256.Sum256([]byte(style[0][1]))
	for _, want := range []string{"default-src 'none'", "style-src 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'", "form-action 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	for _, banned := range []string{"<script", " style=", "src=", "<link", "@import", "url("} {
		if strings.Contains(body, banned) {
			t.Errorf("page holds %q, which the policy blocks", banned)
		}
	}

	p := &statusPage{registry: fleet, now: func() time.Time { return statusNow }, logger: slog.New(slog.DiscardHandler)}
	own := httptest.NewRecorder()
	own.Header().Set("Content-Security-Policy", "default-src 'self'")
	p.ServeHTTP(own, httptest.NewRequest(http.MethodGet, "/", nil))
	if got := own.Header().Get("Content-Security-Policy"); got != "default-src 'self'" {
		t.Errorf("the web config's policy became %q", got)
	}
}

// TestStatusPage_DiscoveryLink: the http_sd link is there only for readers
// who can fetch it (a client certificate, or anonymous http_sd); a reader
// who logged in with basic auth gets how to fetch it instead of a 401.
func TestStatusPage_DiscoveryLink(t *testing.T) {
	fleet := newFleet(t, []fleetAgent{{id: "a1", host: "db1.example.com"}})
	for _, tt := range []struct {
		name            string
		show, sdReadble bool
		link            bool
	}{
		{"client certificate", true, true, true},
		{"basic auth", true, false, false},
		{"anonymous", false, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := &statusPage{
				registry: fleet, now: func() time.Time { return statusNow }, logger: slog.New(slog.DiscardHandler),
				showFleet:  func(*http.Request) bool { return tt.show },
				sdReadable: func(*http.Request) bool { return tt.sdReadble },
			}
			rec := httptest.NewRecorder()
			p.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
			body := rec.Body.String()
			if got := strings.Contains(body, `href="/api/v1/discovery"`); got != tt.link {
				t.Errorf("http_sd link shown: %v, want %v", got, tt.link)
			}
			if got := strings.Contains(body, "not for a browser's password"); got == tt.link {
				t.Errorf("how to fetch http_sd shown: %v, want %v", got, !tt.link)
			}
		})
	}
}

// TestStatusPage_RestartGraceMark: an agent without a heartbeat since the
// server restarted, older than the TTL, is stale and marked as listed only
// by the restart grace, with until when; a fresh one is not.
func TestStatusPage_RestartGraceMark(t *testing.T) {
	st := memory.New()
	ctx := context.Background()
	for id, seen := range map[string]time.Duration{"old": time.Hour, "fresh": 20 * time.Second} {
		if err := st.Put(ctx, &store.Agent{ID: id, Hostname: id + ".example.com", Address: "10.0.0.1", Port: 9956,
			Labels: labels.EmptyLabels(), CertSerial: "s-" + id, LastSeen: statusNow.Add(-seen)}); err != nil {
			t.Fatal(err)
		}
	}
	r := registry.New(registry.Config{Store: st, TTL: 5 * time.Minute, Now: func() time.Time { return statusNow }})
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}
	body := serveStatus(t, r, "/").Body.String()
	rows := strings.Split(body, "<tr>")
	var old, fresh string
	for _, row := range rows {
		switch {
		case strings.Contains(row, "old.example.com"):
			old = row
		case strings.Contains(row, "fresh.example.com"):
			fresh = row
		}
	}
	if !strings.Contains(old, `state-stale">stale`) || !strings.Contains(old, "listed only by the restart grace, which ends in 5m0s") {
		t.Errorf("the graced agent's row lacks its mark:\n%s", old)
	}
	if !strings.Contains(fresh, `state-healthy">healthy`) || strings.Contains(fresh, "restart grace") {
		t.Errorf("the fresh agent's row:\n%s", fresh)
	}
}

func TestHumanDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                                 "0s",
		1400 * time.Millisecond:           "1s",
		59 * time.Second:                  "59s",
		3*time.Minute + 12*time.Second:    "3m12s",
		5*time.Hour + 7*time.Minute:       "5h7m",
		47*time.Hour + 59*time.Minute:     "47h59m",
		6*24*time.Hour + 4*time.Hour + 29: "6d4h",
	} {
		if got := humanDuration(d); got != want {
			t.Errorf("humanDuration(%v) = %q, want %q", d, got, want)
		}
	}
}
