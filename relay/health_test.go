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
	"bytes"
	"cmp"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// failingUpstream serves one sample, or a 500 while failing is set. Its URL
// carries a password, which neither logs nor health reports may show.
func failingUpstream(t *testing.T) (url string, failing *atomic.Bool) {
	t.Helper()
	failing = new(atomic.Bool)
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if failing.Load() {
			http.Error(w, "broken", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = w.Write([]byte("up_metric 1\n"))
	}))
	t.Cleanup(upstream.Close)
	return strings.Replace(upstream.URL, "http://", "http://user:secret@", 1), failing
}

func TestRelay_LogsFirstFailureAndRecovery(t *testing.T) {
	u, failing := failingUpstream(t)
	cfg, err := ParseConfig([]byte("exporters:\n  - name: app\n    url: " + u + "/metrics\n"))
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	r, err := New(cfg, slog.New(slog.NewTextHandler(&logs, nil)), collector.NewRelay(prometheus.NewRegistry()))
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name                 string
		fail                 bool
		wantStatus           int
		wantFailing, wantRec int
	}{
		{"healthy", false, http.StatusOK, 0, 0},
		{"first failure", true, http.StatusBadGateway, 1, 0},
		{"still failing", true, http.StatusBadGateway, 1, 0},
		{"recovered", false, http.StatusOK, 1, 1},
		{"failing again", true, http.StatusBadGateway, 2, 1},
	} {
		t.Run(step.name, func(t *testing.T) {
			failing.Store(step.fail)
			for _, path := range []string{ExporterPath("app"), aggregatePath} {
				if rec := scrape(t, r, path, acceptText); rec.Code != step.wantStatus && path != aggregatePath {
					t.Errorf("%s: status %d, want %d", path, rec.Code, step.wantStatus)
				}
			}
			out := logs.String()
			if got := strings.Count(out, "Exporter is failing"); got != step.wantFailing {
				t.Errorf("%d failure lines, want %d:\n%s", got, step.wantFailing, out)
			}
			if got := strings.Count(out, "Exporter recovered"); got != step.wantRec {
				t.Errorf("%d recovery lines, want %d:\n%s", got, step.wantRec, out)
			}
			if strings.Contains(out, "secret") {
				t.Errorf("the log shows the URL's password:\n%s", out)
			}
		})
	}
	if !strings.Contains(logs.String(), "reason=status") {
		t.Errorf("the failure line has no reason:\n%s", logs.String())
	}
}

func TestRelay_HealthReportsLastResult(t *testing.T) {
	u, failing := failingUpstream(t)
	cfgText := "exporters:\n  - name: app\n    url: " + u + "/metrics\n  - name: idle\n    url: " + u + "/metrics\n"
	newRelay := func() *Relay {
		cfg, err := ParseConfig([]byte(cfgText))
		if err != nil {
			t.Fatal(err)
		}
		r, err := New(cfg, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	r := newRelay()
	var since time.Time
	for _, step := range []struct {
		name       string
		fail       bool
		want       string
		sinceMoves bool
	}{
		{"never scraped", false, "", false},
		{"up", false, protocol.ExporterUp, true},
		{"down", true, protocol.ExporterDown, true},
		{"still down", true, protocol.ExporterDown, false},
		{"recovered", false, protocol.ExporterUp, true},
		{"still up", false, protocol.ExporterUp, false},
	} {
		t.Run(step.name, func(t *testing.T) {
			failing.Store(step.fail)
			if step.want != "" {
				scrape(t, r, ExporterPath("app"), acceptText)
			}
			hs := r.Health()
			if err := protocol.ValidateExporterHealth(hs); err != nil {
				t.Fatalf("invalid report %+v: %v", hs, err)
			}
			if len(hs) != 2 || hs[0].Name != "app" || hs[1].Name != "idle" || hs[1].State != protocol.ExporterUnknown {
				t.Fatalf("report %+v, want app, then idle unknown", hs)
			}
			h := hs[0]
			want := cmp.Or(step.want, protocol.ExporterUnknown)
			if h.State != want {
				t.Fatalf("state %s, want %s", h.State, want)
			}
			if step.want != "" && h.LastResult.IsZero() {
				t.Fatal("no last result time")
			}
			if moved := !h.Since.Equal(since); moved != step.sinceMoves {
				t.Fatalf("since moved %v (%v -> %v), want %v", moved, since, h.Since, step.sinceMoves)
			}
			since = h.Since
			switch {
			case h.State == protocol.ExporterDown && !strings.Contains(h.Reason, "status: upstream answered 500"):
				t.Fatalf("reason %q, want the class and the error", h.Reason)
			case h.State != protocol.ExporterDown && h.Reason != "":
				t.Fatalf("reason %q on a healthy exporter", h.Reason)
			case strings.Contains(h.Reason, "secret"):
				t.Fatalf("the reason shows the URL's password: %q", h.Reason)
			}
		})
	}

	t.Run("a reload keeps the health of exporters that stay", func(t *testing.T) {
		failing.Store(true)
		scrape(t, r, ExporterPath("app"), acceptText)
		next := newRelay()
		next.InheritHealth(r)
		got, want := next.Health(), r.Health()
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("after the reload\n got %+v\nwant %+v", got, want)
		}
	})
}
