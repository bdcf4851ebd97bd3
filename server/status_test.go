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
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/api"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
)

// statusNow is the fixed clock of the status page tests.
var statusNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// fleetAgent is an agent as a registration stores it.
type fleetAgent struct {
	id, host string
	labels   map[string]string
	revoked  bool
	maint    bool
}

// newFleet loads agents into a real registry (on the memory store) whose
// clock stands at statusNow; every agent was last seen 20 s before.
func newFleet(t *testing.T, agents []fleetAgent) *registry.Registry {
	t.Helper()
	r := registry.New(registry.Config{
		Store: memory.New(),
		TTL:   5 * time.Minute,
		Now:   func() time.Time { return statusNow },
	})
	ctx := context.Background()
	if err := r.Load(ctx); err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		agent := &store.Agent{
			ID: a.id, Hostname: a.host, Address: "10.0.0.1", Port: 9956, Labels: labels.FromMap(a.labels),
			Exporters:    []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}},
			CertSerial:   "serial-" + a.id,
			CertNotAfter: statusNow.Add(16 * time.Hour),
			LastSeen:     statusNow.Add(-20 * time.Second),
			Maintenance:  a.maint,
		}
		if a.revoked {
			agent.RevokedAt = statusNow.Add(-time.Minute)
		}
		if err := r.Put(ctx, agent); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// serveStatus renders the page for a request that may see the fleet.
func serveStatus(t *testing.T, r *registry.Registry, target string) *httptest.ResponseRecorder {
	t.Helper()
	return serveStatusAs(t, r, target, true)
}

func serveStatusAs(t *testing.T, r *registry.Registry, target string, showFleet bool) *httptest.ResponseRecorder {
	t.Helper()
	p := &statusPage{
		registry: r, now: func() time.Time { return statusNow }, logger: slog.New(slog.DiscardHandler),
		showFleet: func(*http.Request) bool { return showFleet },
	}
	rec := httptest.NewRecorder()
	p.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, target, nil))
	return rec
}

func TestStatusPage(t *testing.T) {
	fleet := newFleet(t, []fleetAgent{
		{id: "a1", host: "db1.example.com", labels: map[string]string{"role": "db"}},
		{id: "a2", host: "web1.example.com", revoked: true},
		{id: "a3", host: "web2.example.com", maint: true, labels: map[string]string{
			"evil":  `<script>alert(1)</script>`,
			"quote": `"><img src=x onerror=alert(2)>`,
		}},
	})
	tests := []struct {
		name      string
		target    string
		anonymous bool
		status    int
		contains  []string
		absent    []string
	}{
		{
			name: "fleet", target: "/", status: http.StatusOK,
			contains: []string{
				"db1.example.com", "web1.example.com", "web2.example.com", "10.0.0.1:9956",
				"<b>3</b>all agents", `state-healthy">healthy`, `state-revoked">revoked`,
				"role=db", `class="exp-unknown"`, ">node unknown</span>", "20s ago", "in 16h0m", "<code>a1</code>",
			},
		},
		{
			name: "hostile labels are text", target: "/", status: http.StatusOK,
			contains: []string{"evil=&lt;script&gt;alert(1)&lt;/script&gt;", "quote=&#34;&gt;&lt;img src=x onerror=alert(2)&gt;"},
			absent:   []string{"<script>", "<img"},
		},
		{
			name: "state filter", target: "/?state=revoked", status: http.StatusOK,
			contains: []string{"web1.example.com", `class="count selected" href="/?state=revoked"`, `<option value="revoked" selected>`},
			absent:   []string{"db1.example.com", "web2.example.com"},
		},
		{
			name: "anonymous: counts, no agents", target: "/", anonymous: true, status: http.StatusOK,
			contains: []string{"<b>3</b>all agents", "The agent list needs credentials"},
			absent:   []string{"db1.example.com", "web1.example.com", "10.0.0.1", "role=db", "<code>a1</code>"},
		},
		{
			name: "anonymous with a state filter", target: "/?state=revoked", anonymous: true, status: http.StatusOK,
			contains: []string{"The agent list needs credentials"},
			absent:   []string{"web1.example.com"},
		},
		{name: "unknown state", target: "/?state=bogus", status: http.StatusBadRequest, contains: []string{"unknown state"}},
		{name: "other paths are not the page", target: "/nope", status: http.StatusNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := serveStatusAs(t, fleet, tt.target, !tt.anonymous)
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
	var agents []fleetAgent
	for i := range maxStatusRows + 100 {
		agents = append(agents, fleetAgent{id: fmt.Sprintf("a%04d", i), host: fmt.Sprintf("h%04d.example.com", i)})
	}
	rec := serveStatus(t, newFleet(t, agents), "/")
	body := rec.Body.String()
	if n := strings.Count(body, "<tr>") - 1; n != maxStatusRows {
		t.Errorf("%d rows, want %d", n, maxStatusRows)
	}
	// The first rows by hostname, in order.
	if i, j := strings.Index(body, "h0000.example.com"), strings.Index(body, "h0499.example.com"); i < 0 || j < i {
		t.Error("rows are not the first agents by hostname, in order")
	}
	if strings.Contains(body, "h0500.example.com") {
		t.Error("a row past the limit is shown")
	}
	if !strings.Contains(body, fmt.Sprintf("Showing the first %d of %d matching agents", maxStatusRows, maxStatusRows+100)) {
		t.Error("no note about the rows left out")
	}
}

// TestFleetReader: who may see the agent table by certificate, over a real
// TLS listener whose client CA pool (a web config's client_ca_file) bundles
// another CA besides ours. A certificate of that CA is verified by TLS but
// must not see the fleet: the page asks the API's authenticator, as http_sd
// does. Basic auth is checked by the web package, which marks the request.
func TestFleetReader(t *testing.T) {
	dir := t.TempDir()
	authority, _, err := ca.LoadOrCreate(dir)
	if err != nil {
		t.Fatal(err)
	}
	tokenKey, _, err := ca.LoadOrCreateTokenKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	foreign, _, err := ca.LoadOrCreate(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fleet := newFleet(t, []fleetAgent{{id: "a1", host: "db1.example.com"}})
	metrics := collector.NewServer(prometheus.NewRegistry())
	api := api.New(api.Config{Registry: fleet, CA: authority, Tokens: ca.NewTokens(tokenKey), Metrics: metrics})
	page := &statusPage{
		registry: fleet, now: func() time.Time { return statusNow }, logger: slog.New(slog.DiscardHandler),
		showFleet: fleetReader(api.CanReadFleet),
	}
	// client-cas.crt of both data directories, as an operator's bundle.
	clientCAs := x509.NewCertPool()
	if !clientCAs.AppendCertsFromPEM(authority.ClientCAsPEM()) || !clientCAs.AppendCertsFromPEM(foreign.ClientCAsPEM()) {
		t.Fatal("client CAs not added")
	}
	srv := httptest.NewUnstartedServer(page)
	srv.TLS = &tls.Config{ClientAuth: tls.VerifyClientCertIfGiven, ClientCAs: clientCAs}
	srv.StartTLS()
	t.Cleanup(srv.Close)

	certOf := func(issuer *ca.Authority, role ca.Role) *tls.Certificate {
		certPEM, keyPEM, err := issuer.IssueClient("test-"+string(role), role, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		return &c
	}
	tests := []struct {
		name string
		cert *tls.Certificate
		want bool
	}{
		{"no client certificate", nil, false},
		{"discovery certificate", certOf(authority, ca.RoleDiscovery), true},
		{"admin certificate", certOf(authority, ca.RoleAdmin), true},
		{"discovery certificate of another CA in client_ca_file", certOf(foreign, ca.RoleDiscovery), false},
		{"admin certificate of another CA in client_ca_file", certOf(foreign, ca.RoleAdmin), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tr := srv.Client().Transport.(*http.Transport).Clone()
			if tt.cert != nil {
				tr.TLSClientConfig.Certificates = []tls.Certificate{*tt.cert}
			}
			c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			defer tr.CloseIdleConnections()
			resp, err := c.Get(srv.URL + "/")
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if got := strings.Contains(string(body), "db1.example.com"); got != tt.want {
				t.Errorf("agent list shown: %v, want %v", got, tt.want)
			}
		})
	}
	if n := testutil.ToFloat64(metrics.CertRejections.WithLabelValues("unverified_certificate")); n != 2 {
		t.Errorf("unverified certificates counted %v times, want 2", n)
	}
}
