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
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v2"
)

// The discovery server and Prometheus addresses examples/prometheus.yml
// ships with; its header tells operators to replace the first.
const (
	exampleServerAddr     = "server.example.com:9955"
	examplePrometheusAddr = "localhost:9090"
)

// yamlGet returns the value of key in m, nil if it is absent.
func yamlGet(m yaml.MapSlice, key string) any {
	for _, it := range m {
		if it.Key == key {
			return it.Value
		}
	}
	return nil
}

// yamlSet sets key in m to v, adding it if it is absent.
func yamlSet(m *yaml.MapSlice, key string, v any) {
	for i := range *m {
		if (*m)[i].Key == key {
			(*m)[i].Value = v
			return
		}
	}
	*m = append(*m, yaml.MapItem{Key: key, Value: v})
}

// eachMap calls fn with each mapping of a YAML list and stores what fn
// made of it back into the list; anything but a list of mappings fails
// the test.
func eachMap(t *testing.T, what string, v any, fn func(m *yaml.MapSlice)) {
	t.Helper()
	if v == nil {
		return
	}
	list, ok := v.([]any)
	if !ok {
		t.Fatalf("example config: %s is not a list", what)
	}
	for i, it := range list {
		m, ok := it.(yaml.MapSlice)
		if !ok {
			t.Fatalf("example config: an element of %s is not a mapping", what)
		}
		fn(&m)
		list[i] = m
	}
}

// deployExampleConfig is an example Prometheus configuration (name, such
// as examples/prometheus.yml) as an operator deploys it, changed through its parsed structure and nowhere else: the discovery
// server's address (in http_sd URLs, proxy_url and static targets) becomes
// serverAddr, Prometheus' own (the prometheus job's target) promAddr, and
// the scrape and http_sd refresh intervals become 1s so that the test does
// not wait for minutes. Relative paths (certs/, rules/) are left as they
// are: Prometheus resolves them against the file's directory. An address
// the test does not know fails it, so that a new one is not scraped
// somewhere else by accident. It returns the configuration and the names
// of its jobs.
func deployExampleConfig(t *testing.T, name string, data []byte, serverAddr, promAddr string) (string, []string) {
	t.Helper()
	var cfg yaml.MapSlice
	if err := yaml.UnmarshalStrict(data, &cfg); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	global, _ := yamlGet(cfg, "global").(yaml.MapSlice)
	yamlSet(&global, "scrape_interval", "1s")
	yamlSet(&cfg, "global", global)

	rewriteURL := func(job, field string, v any) string {
		s, _ := v.(string)
		u, err := url.Parse(s)
		if err != nil || u.Host != exampleServerAddr {
			t.Fatalf("%s: job %s: %s %q does not point at %s", name, job, field, s, exampleServerAddr)
		}
		u.Host = serverAddr
		return u.String()
	}
	var jobs []string
	eachMap(t, "scrape_configs", yamlGet(cfg, "scrape_configs"), func(job *yaml.MapSlice) {
		jobName, _ := yamlGet(*job, "job_name").(string)
		jobs = append(jobs, jobName)
		if v := yamlGet(*job, "proxy_url"); v != nil {
			yamlSet(job, "proxy_url", rewriteURL(jobName, "proxy_url", v))
		}
		eachMap(t, "http_sd_configs", yamlGet(*job, "http_sd_configs"), func(sd *yaml.MapSlice) {
			yamlSet(sd, "url", rewriteURL(jobName, "http_sd_configs url", yamlGet(*sd, "url")))
			yamlSet(sd, "refresh_interval", "1s")
		})
		eachMap(t, "static_configs", yamlGet(*job, "static_configs"), func(sc *yaml.MapSlice) {
			targets, _ := yamlGet(*sc, "targets").([]any)
			for i, target := range targets {
				switch target {
				case exampleServerAddr:
					targets[i] = serverAddr
				case examplePrometheusAddr:
					targets[i] = promAddr
				default:
					t.Fatalf("%s: job %s: static target %v is neither the server nor Prometheus", name, jobName, target)
				}
			}
		})
	})
	out, err := yaml.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return string(out), jobs
}

// TestExamples_EveryPrometheusJobScrapes runs examples/prometheus.yml, as
// its header says to deploy it, in real Prometheus servers (Debian's 2.42
// and Prometheus 3) against a real server and a fleet of real agents
// relaying real node_exporters: two hosts Prometheus reaches (role=web,
// and role=database with a postgres exporter) and one behind NAT in a
// network namespace, scraped through the server's tunnel. Every job the
// file holds, read from it, must have targets and all of them up: a job
// added to the example without a host here to scrape fails the test.
//
// No postgres_exporter runs: the agent on the database host relays a
// node_exporter under the exporter name postgres. What the postgres job
// decides (the ?exporter= and ?label= filters, relabeling, the scrape over
// mTLS) is the same for any exporter behind the relay.
func TestExamples_EveryPrometheusJobScrapes(t *testing.T) {
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	example, err := os.ReadFile(filepath.Join(root, "examples", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}

	s := startServer(t)
	enrollToken := createToken(t, s.DataDir, "--scope=enroll", "--ttl=10m")
	startNATAgent(t, "e2e-nat-host", enrollToken, s)
	hosts := []struct {
		hostname, relay string
		labels          map[string]string
	}{
		{"e2e-web", "exporters:\n  - name: node\n    url: http://%[1]s/metrics\n", map[string]string{"role": "web"}},
		{"e2e-db", "exporters:\n  - name: node\n    url: http://%[1]s/metrics\n  - name: postgres\n    url: http://%[1]s/metrics\n", map[string]string{"role": "database"}},
	}
	for _, h := range hosts {
		startAgent(t, s, agentOptions{
			Hostname:    h.hostname,
			Token:       enrollToken,
			RelayConfig: fmt.Sprintf(h.relay, startNodeExporter(t)),
			Labels:      h.labels,
		})
	}
	// What each job must find in this fleet, where the file's filters
	// decide it. Jobs not listed here need at least one target.
	wantTargets := map[string]int{
		"node":                        2,
		"postgres":                    1,
		"node_tunneled":               1,
		"baremetal_sd_agent":          2,
		"baremetal_sd_agent_tunneled": 1,
	}

	for _, rel := range prometheusReleases() {
		t.Run(rel.Name, func(t *testing.T) {
			// The layout of the example's header: prometheus.yml with
			// certs/ and rules/ next to it.
			dir := t.TempDir()
			writePrometheusCerts(t, s.DataDir, filepath.Join(dir, "certs"))
			if err := os.Mkdir(filepath.Join(dir, "rules"), 0o755); err != nil {
				t.Fatal(err)
			}
			rules, err := os.ReadFile(filepath.Join(root, "examples", "rules", "baremetal_sd.rules.yml"))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "rules", "baremetal_sd.rules.yml"), rules, 0o644); err != nil {
				t.Fatal(err)
			}
			var jobs []string
			prom := startPrometheusIn(t, rel.Binary, dir, func(addr string) string {
				cfg, names := deployExampleConfig(t, "examples/prometheus.yml", example, s.Addr, addr)
				jobs = names
				return cfg
			})
			if len(jobs) == 0 {
				t.Fatal("examples/prometheus.yml has no scrape jobs")
			}
			waitFor(t, 2*time.Minute, func() error {
				return checkEveryJobUp(t, prom, jobs, wantTargets)
			})
		})
	}
}

// checkEveryJobUp returns an error unless every job has targets, as many
// as want says where it says, and all of them up.
func checkEveryJobUp(t *testing.T, prom *testPrometheus, jobs []string, want map[string]int) error {
	samples, err := prom.query(t.Context(), "up")
	if err != nil {
		return err
	}
	up := make(map[string][]string)
	for _, s := range samples {
		up[s.Metric["job"]] = append(up[s.Metric["job"]], s.Metric["instance"]+"="+s.Value)
	}
	var problems []string
	for _, job := range jobs {
		got := up[job]
		sort.Strings(got)
		down := slices.ContainsFunc(got, func(s string) bool { return !strings.HasSuffix(s, "=1") })
		n, counted := want[job]
		switch {
		case len(got) == 0:
			problems = append(problems, fmt.Sprintf("job %s has no targets", job))
		case counted && len(got) != n:
			problems = append(problems, fmt.Sprintf("job %s has %d targets, want %d: %v", job, len(got), n, got))
		case down:
			problems = append(problems, fmt.Sprintf("job %s has targets down: %v", job, got))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	if ts, err := prom.targets(t.Context()); err == nil {
		for _, tg := range ts.Active {
			if tg.Health != "up" {
				problems = append(problems, fmt.Sprintf("target %s of %s: %s %s", tg.ScrapeURL, tg.ScrapePool, tg.Health, tg.LastError))
			}
		}
	}
	return fmt.Errorf("%s", strings.Join(problems, "\n"))
}
