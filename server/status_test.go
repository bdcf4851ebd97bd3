package server

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery"
)

type fakeLister []discovery.AgentView

func (f fakeLister) List() []discovery.AgentView { return f }

func view(id, host string, state discovery.AgentState, labels map[string]string) discovery.AgentView {
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	return discovery.AgentView{
		Agent: discovery.Agent{
			ID: id, Hostname: host, Address: "10.0.0.1", Port: 9956, Labels: labels,
			Exporters:    []discovery.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
			LastSeen:     now.Add(-20 * time.Second),
			CertNotAfter: now.Add(16 * time.Hour),
		},
		State: state,
	}
}

func serveStatus(t *testing.T, agents []discovery.AgentView, target string) *httptest.ResponseRecorder {
	t.Helper()
	p := &statusPage{
		registry: fakeLister(agents),
		now:      func() time.Time { return time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC) },
		logger:   slog.New(slog.DiscardHandler),
	}
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec
}

func TestStatusPage(t *testing.T) {
	fleet := []discovery.AgentView{
		view("a1", "db1.example.com", discovery.StateHealthy, map[string]string{"role": "db"}),
		view("a2", "web1.example.com", discovery.StateRevoked, nil),
		view("a3", "web2.example.com", discovery.StateMaintenance, map[string]string{
			"evil":  `<script>alert(1)</script>`,
			"quote": `"><img src=x onerror=alert(2)>`,
		}),
	}
	tests := []struct {
		name     string
		target   string
		status   int
		contains []string
		absent   []string
	}{
		{
			name: "fleet", target: "/", status: http.StatusOK,
			contains: []string{
				"db1.example.com", "web1.example.com", "web2.example.com", "10.0.0.1:9956",
				"<b>3</b>all agents", `state-healthy">healthy`, `state-revoked">revoked`,
				"role=db", "<span>node</span>", "20s ago", "in 16h0m0s", "<code>a1</code>",
			},
		},
		{
			name: "hostile labels are text", target: "/", status: http.StatusOK,
			contains: []string{"evil=&lt;script&gt;alert(1)&lt;/script&gt;", "quote=&#34;&gt;&lt;img src=x onerror=alert(2)&gt;"},
			absent:   []string{"<script>", "<img"},
		},
		{
			name: "state filter", target: "/?state=revoked", status: http.StatusOK,
			contains: []string{"web1.example.com", `class="count selected" href="/?state=revoked"`},
			absent:   []string{"db1.example.com", "web2.example.com"},
		},
		{name: "unknown state", target: "/?state=bogus", status: http.StatusBadRequest, contains: []string{"unknown state"}},
		{name: "other paths are not the page", target: "/nope", status: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := serveStatus(t, fleet, tt.target)
			if rec.Code != tt.status {
				t.Fatalf("status %d, want %d: %s", rec.Code, tt.status, rec.Body)
			}
			body := rec.Body.String()
			for _, s := range tt.contains {
				if !strings.Contains(body, s) {
					t.Errorf("page lacks %q", s)
				}
			}
			for _, s := range tt.absent {
				if strings.Contains(body, s) {
					t.Errorf("page contains %q", s)
				}
			}
		})
	}
}

func TestStatusPage_BoundedRows(t *testing.T) {
	var fleet []discovery.AgentView
	for i := range maxStatusRows + 100 {
		fleet = append(fleet, view(fmt.Sprintf("a%04d", i), fmt.Sprintf("h%04d", i), discovery.StateHealthy, nil))
	}
	rec := serveStatus(t, fleet, "/")
	body := rec.Body.String()
	if n := strings.Count(body, "<tr>") - 1; n != maxStatusRows {
		t.Errorf("%d rows, want %d", n, maxStatusRows)
	}
	if !strings.Contains(body, fmt.Sprintf("Showing the first %d of %d agents", maxStatusRows, maxStatusRows+100)) {
		t.Error("no note about the rows left out")
	}
}
