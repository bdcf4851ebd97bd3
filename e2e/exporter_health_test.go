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

package e2e

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v2"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// runNodeExporterAt runs node_exporter on addr until the returned function
// stops it, so that a test can take an exporter away and bring it back on
// the same address.
func runNodeExporterAt(t *testing.T, addr string) (stop func()) {
	t.Helper()
	log := &logBuffer{}
	dumpOnFailure(t, "node_exporter "+addr, log)
	p := startProcess(t, "node_exporter", log, nodeExporterBinary,
		"--web.listen-address="+addr, "--collector.disable-defaults", "--collector.loadavg")
	stop = func() {
		if !p.exited() {
			_ = p.terminate(stopTimeout)
		}
	}
	t.Cleanup(stop)
	client := &http.Client{Timeout: requestTimeout}
	waitFor(t, startTimeout, func() error {
		if p.exited() {
			t.Fatalf("node_exporter exited while starting: %v", p.err)
		}
		_, err := doRequest(t.Context(), client, http.MethodGet, "http://"+addr+"/metrics", "", nil)
		return err
	})
	return stop
}

// alertExpr reads the expression of an alert from the example rules, so
// that the test evaluates exactly what operators deploy.
func alertExpr(t *testing.T, alert string) (rulesFile, expr string) {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	rulesFile = filepath.Join(root, "examples", "rules", "baremetal_sd.rules.yml")
	data, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert string `yaml:"alert"`
				Expr  string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatal(err)
	}
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == alert {
				return rulesFile, r.Expr
			}
		}
	}
	t.Fatalf("no alert %s in %s", alert, rulesFile)
	return "", ""
}

// TestExporterHealth_EndToEnd: a real node_exporter behind a real agent,
// scraped by a real Prometheus through the relay, goes away and comes back.
// The agent's heartbeats carry it to the server: the status page, `agents
// list` and baremetal_sd_exporters say so, and Prometheus, scraping the
// server with the example rules loaded, has BaremetalSDExporterDown pending
// while the exporter is down and not after it recovered.
func TestExporterHealth_EndToEnd(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	h := newAgentHarness(t, "--agent.ttl=8s") // heartbeats every 2 s
	nodeAddr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	stopNode := runNodeExporterAt(t, nodeAddr)
	const hostname = "health-e2e-host"
	a := startAgent(t, h.s, agentOptions{
		Hostname:    hostname,
		Token:       h.enrollToken(t),
		RelayConfig: fmt.Sprintf("exporters:\n  - name: node\n    url: http://%s/metrics\n", nodeAddr),
	})
	a.waitState(t, h.scraper, "registered")
	id := a.id(t)

	rulesFile, expr := alertExpr(t, "BaremetalSDExporterDown")
	prom := startPrometheus(t, fmt.Sprintf(`
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - %[6]s
scrape_configs:
  - job_name: node
    tls_config:
      ca_file: %[5]s
      cert_file: %[2]s
      key_file: %[3]s
    http_sd_configs:
      - url: %[4]s?exporter=node
        refresh_interval: 1s
        tls_config:
          ca_file: %[1]s
          cert_file: %[2]s
          key_file: %[3]s
  - job_name: baremetal_sd_server
    scheme: https
    tls_config:
      ca_file: %[1]s
      cert_file: %[2]s
      key_file: %[3]s
    static_configs:
      - targets: [%[7]q]
`, h.prom.CAFile, h.prom.CertFile, h.prom.KeyFile, h.s.URL+protocol.PathDiscovery, h.prom.AgentCAFile, rulesFile, h.s.Addr))

	admin := issueCert(t, h.s.DataDir, "operator", "admin")
	agentsList := func() (string, error) {
		cmd := exec.CommandContext(ctx, binary, "agents", "list", "--server.url="+h.s.URL,
			"--tls.ca-file="+admin.CAFile, "--tls.cert-file="+admin.CertFile, "--tls.key-file="+admin.KeyFile)
		out, err := cmd.CombinedOutput()
		if err != nil {
			return "", fmt.Errorf("agents list: %w\n%s", err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, id) {
				return line, nil
			}
		}
		return "", fmt.Errorf("agents list lacks %s:\n%s", id, out)
	}
	statusPage := func(query string) (string, error) {
		resp, err := doRequest(ctx, h.sdClient, http.MethodGet, h.s.URL+"/"+query, "", nil)
		if err != nil {
			return "", err
		}
		if resp.Status != http.StatusOK {
			return "", fmt.Errorf("status page: %d", resp.Status)
		}
		return string(resp.Body), nil
	}
	gauge := func(state string) (string, error) {
		samples, err := prom.query(ctx, fmt.Sprintf(`baremetal_sd_exporters{exporter="node",state=%q}`, state))
		if err != nil {
			return "", err
		}
		if len(samples) != 1 {
			return "", fmt.Errorf("baremetal_sd_exporters{state=%q}: %d samples, want 1", state, len(samples))
		}
		return samples[0].Value, nil
	}
	alertState := func() (string, error) {
		var data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		}
		if err := prom.api(ctx, "/api/v1/alerts", &data); err != nil {
			return "", err
		}
		for _, al := range data.Alerts {
			if al.Labels["alertname"] == "BaremetalSDExporterDown" && al.Labels["exporter"] == "node" {
				return al.State, nil
			}
		}
		return "inactive", nil
	}
	// expect waits until every check passes at once.
	expect := func(what string, checks ...func() error) {
		t.Helper()
		waitFor(t, 90*time.Second, func() error {
			for _, c := range checks {
				if err := c(); err != nil {
					return fmt.Errorf("%s: %w", what, err)
				}
			}
			return nil
		})
	}
	pageShows := func(query string, want ...string) func() error {
		return func() error {
			page, err := statusPage(query)
			if err != nil {
				return err
			}
			for _, w := range want {
				if !strings.Contains(page, w) {
					return fmt.Errorf("status page %s lacks %q", query, w)
				}
			}
			return nil
		}
	}
	listShows := func(want ...string) func() error {
		return func() error {
			line, err := agentsList()
			if err != nil {
				return err
			}
			for _, w := range want {
				if !strings.Contains(line, w) {
					return fmt.Errorf("agents list row %q lacks %q", line, w)
				}
			}
			return nil
		}
	}
	gaugeIs := func(state, want string) func() error {
		return func() error {
			v, err := gauge(state)
			if err != nil {
				return err
			}
			if v != want {
				return fmt.Errorf("baremetal_sd_exporters{exporter=\"node\",state=%q} = %s, want %s", state, v, want)
			}
			return nil
		}
	}
	alertIs := func(want ...string) func() error {
		return func() error {
			st, err := alertState()
			if err != nil {
				return err
			}
			for _, w := range want {
				if st == w {
					return nil
				}
			}
			return fmt.Errorf("BaremetalSDExporterDown is %s, want %v", st, want)
		}
	}
	exprResults := func(want int) func() error {
		return func() error {
			samples, err := prom.query(ctx, expr)
			if err != nil {
				return err
			}
			if len(samples) != want {
				return fmt.Errorf("%s: %d samples, want %d: %v", expr, len(samples), want, samples)
			}
			return nil
		}
	}

	expect("node_exporter up",
		pageShows("", `class="exp-up"`, hostname),
		listShows("node:up"),
		gaugeIs("up", "1"), gaugeIs("down", "0"),
		exprResults(0), alertIs("inactive"))

	stopNode()
	expect("node_exporter gone",
		pageShows("", `class="exp-down"`, "node: connect: upstream unreachable"),
		pageShows("?exporters=down", hostname),
		listShows("node:down", "node: connect: upstream unreachable"),
		gaugeIs("down", "1"), gaugeIs("up", "0"),
		exprResults(1), alertIs("pending", "firing"))

	runNodeExporterAt(t, nodeAddr)
	expect("node_exporter back",
		pageShows("", `class="exp-up"`),
		pageShows("?exporters=down", "No agents match the filters."),
		listShows("node:up"),
		gaugeIs("up", "1"), gaugeIs("down", "0"),
		exprResults(0), alertIs("inactive"))
}
