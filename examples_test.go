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

package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/model"
	toolkitweb "github.com/prometheus/exporter-toolkit/web"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"github.com/prometheus/prometheus/promql/parser"
	"go.yaml.in/yaml/v2"
	"golang.org/x/crypto/bcrypt"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/relay"
	"github.com/baremetal-sd/baremetal_sd/server"
	"github.com/baremetal-sd/baremetal_sd/web"
)

// TestExamples_RelayConfig loads the example relay configuration exactly
// as the agent does at start.
func TestExamples_RelayConfig(t *testing.T) {
	cfg, err := relay.LoadConfig(filepath.Join("examples", "relay.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := relay.New(cfg, nil, nil); err != nil {
		t.Fatal(err)
	}
}

// TestExamples_PrometheusConfig checks the example prometheus.yml with the
// promtool of the Prometheus the end-to-end tests use, as Prometheus would
// load it: next to its rules and real certificate, key and token files,
// as `cert issue` and `token create` make them.
func TestExamples_PrometheusConfig(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run scripts/install-test-deps.sh (make test does)")
	}
	dir := t.TempDir()
	copyFile(t, filepath.Join("examples", "prometheus.yml"), filepath.Join(dir, "prometheus.yml"))
	if err := os.Mkdir(filepath.Join(dir, "rules"), 0o755); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join("examples", "rules", "baremetal_sd.rules.yml"), filepath.Join(dir, "rules", "baremetal_sd.rules.yml"))

	data := serverDataDir(t, dir)
	if _, _, err := ca.LoadOrCreateTokenKey(data); err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(dir, "certs")
	if err := server.IssueClientCert(data, "prometheus", ca.RoleDiscovery, time.Hour, certs); err != nil {
		t.Fatal(err)
	}
	token, err := server.CreateToken(data, ca.TokenSpec{Scope: ca.ScopeDiscovery, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(certs, "discovery.token"), []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command(promtool, "check", "config", filepath.Join(dir, "prometheus.yml")).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}

	// The README's snippets name files that are not there: syntax only.
	for i, b := range readmeScrapeConfigs(t) {
		path := filepath.Join(dir, fmt.Sprintf("readme-%d.yml", i+1))
		if err := os.WriteFile(path, []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command(promtool, "check", "config", "--syntax-only", path).CombinedOutput(); err != nil {
			t.Errorf("README.md, Prometheus configuration, snippet %d: promtool check config: %v\n%s", i+1, err, out)
		}
	}
}

// scrapeJob is the part of a Prometheus scrape config the relabeling tests
// read.
type scrapeJob struct {
	JobName       string                 `yaml:"job_name"`
	HTTPSDConfigs []struct{ URL string } `yaml:"http_sd_configs"`
	Relabel       []*relabel.Config      `yaml:"relabel_configs"`
}

// fleetJobs reads the http_sd jobs of a Prometheus configuration.
func fleetJobs(t *testing.T, name string, data []byte) []scrapeJob {
	t.Helper()
	var cfg struct {
		ScrapeConfigs []scrapeJob `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	var jobs []scrapeJob
	for _, j := range cfg.ScrapeConfigs {
		if len(j.HTTPSDConfigs) == 0 {
			continue
		}
		for _, rc := range j.Relabel {
			if err := rc.Validate(model.UTF8Validation); err != nil {
				t.Fatalf("%s: job %s: %v", name, j.JobName, err)
			}
		}
		jobs = append(jobs, j)
	}
	return jobs
}

// discoveredTarget is a target as Prometheus holds it before relabeling:
// one target group of http_sd for an agent web1 with the label role=web
// and, when hostile, agent labels instance, job, exporter and maintenance
// too.
func discoveredTarget(job scrapeJob, exporter string, maintenance, hostile bool) map[string]string {
	path := "/exporters/" + exporter + "/metrics"
	if exporter == protocol.AgentExporterName {
		path = protocol.AgentMetricsPath
	}
	target := map[string]string{
		model.AddressLabel:                "10.0.0.1:9956",
		model.MetricsPathLabel:            path,
		model.SchemeLabel:                 "https",
		model.JobLabel:                    job.JobName,
		protocol.MetaAgentID:              "a1",
		protocol.MetaHostname:             "web1",
		protocol.MetaAddress:              "10.0.0.1",
		protocol.MetaExporter:             exporter,
		protocol.MetaMaintenance:          strconv.FormatBool(maintenance),
		protocol.MetaLabelPrefix + "role": "web",
		"__meta_url":                      job.HTTPSDConfigs[0].URL,
	}
	if hostile {
		for _, l := range []string{"instance", "job", "exporter", "maintenance"} {
			target[protocol.MetaLabelPrefix+l] = "forged"
		}
	}
	return target
}

// targetLabels relabels a discovered target as Prometheus does and returns
// the labels its series get, or nil when the target is dropped.
func targetLabels(job scrapeJob, discovered map[string]string) map[string]string {
	lb := labels.NewBuilder(labels.FromMap(discovered))
	if !relabel.ProcessBuilder(lb, job.Relabel...) {
		return nil
	}
	out := lb.Labels().Map()
	for k := range out {
		if strings.HasPrefix(k, model.MetaLabelPrefix) {
			delete(out, k)
		}
	}
	return out
}

// checkFleetRelabeling relabels targets of every http_sd job and checks
// the rules the alerts and dashboards rely on:
//   - a job per exporter (?exporter=NAME) drops hosts in maintenance and
//     sets exporter=NAME, so that up{exporter="node"} works; the relay adds
//     no exporter label on those endpoints, so nothing is renamed;
//   - the agents' job (?exporter=agent) keeps hosts in maintenance with
//     maintenance="true" and sets no exporter label, which would rename the
//     relay metrics' own to exported_exporter;
//   - a job on the aggregate endpoint (/exporters/metrics) sets no exporter
//     label either: the relay labels each series with its exporter there;
//   - every job sets instance to the hostname and takes the agent's labels,
//     none of which may overwrite instance, job, exporter or maintenance.
//
// Without full, a configuration for a first look (the quickstart) is
// checked for its exporter labels and hostnames only.
func checkFleetRelabeling(t *testing.T, name string, jobs []scrapeJob, full bool) {
	t.Helper()
	for _, job := range jobs {
		u, err := url.Parse(job.HTTPSDConfigs[0].URL)
		if err != nil {
			t.Fatalf("%s: job %s: %v", name, job.JobName, err)
		}
		exporters := u.Query()["exporter"]
		if len(exporters) != 1 {
			t.Errorf("%s: job %s reads http_sd without one ?exporter= filter: %s", name, job.JobName, u)
			continue
		}
		exporter := exporters[0]
		// The agent's target group, unless the job points it at the
		// aggregate endpoint, is the agents' own job.
		first := targetLabels(job, discoveredTarget(job, exporter, false, false))
		aggregate := first != nil && first[model.MetricsPathLabel] == "/exporters/metrics"
		agentsJob := exporter == protocol.AgentExporterName && !aggregate
		for _, maintenance := range []bool{false, true} {
			if maintenance && !full {
				continue
			}
			got := targetLabels(job, discoveredTarget(job, exporter, maintenance, full))
			where := fmt.Sprintf("%s: job %s, exporter %s, maintenance %v", name, job.JobName, exporter, maintenance)
			switch {
			case maintenance && !agentsJob:
				if got != nil {
					t.Errorf("%s: kept %v, want the target dropped", where, got)
				}
				continue
			case got == nil:
				t.Errorf("%s: target dropped", where)
				continue
			}
			want := map[string]string{"instance": "web1", "job": job.JobName, "role": "web"}
			switch {
			case agentsJob && maintenance:
				want["maintenance"] = "true"
			case exporter != protocol.AgentExporterName:
				want["exporter"] = exporter
			}
			for _, l := range []string{"instance", "job", "role", "exporter", "maintenance"} {
				if got[l] != want[l] {
					t.Errorf("%s: %s=%q, want %q (target labels %v)", where, l, got[l], want[l], got)
				}
			}
		}
	}
}

// TestExamples_PrometheusRelabeling runs the relabeling of
// examples/prometheus.yml, of the quickstart's configuration and of every
// scrape configuration in the README's Prometheus section over targets as
// http_sd gives them.
func TestExamples_PrometheusRelabeling(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("examples", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	jobs := fleetJobs(t, "examples/prometheus.yml", data)
	names := make(map[string]bool)
	for _, j := range jobs {
		names[j.JobName] = true
	}
	if !names["node"] || !names["baremetal_sd_agent"] {
		t.Fatalf("examples/prometheus.yml lacks the node or baremetal_sd_agent job: %v", names)
	}
	checkFleetRelabeling(t, "examples/prometheus.yml", jobs, true)

	// The quickstart writes its own, shorter configuration.
	script, err := os.ReadFile(filepath.Join("examples", "quickstart.sh"))
	if err != nil {
		t.Fatal(err)
	}
	heredoc := regexp.MustCompile(`(?s)<<PROM\n(.*?)\nPROM\n`).FindSubmatch(script)
	if heredoc == nil {
		t.Fatal("examples/quickstart.sh writes no prometheus.yml")
	}
	quick := strings.NewReplacer("${SERVER}", "https://127.0.0.1:9955", "${certs}", "certs").Replace(string(heredoc[1]))
	jobs = fleetJobs(t, "examples/quickstart.sh", []byte(quick))
	if len(jobs) != 2 {
		t.Errorf("examples/quickstart.sh: %d http_sd jobs, want one for node and one for the agent", len(jobs))
	}
	checkFleetRelabeling(t, "examples/quickstart.sh", jobs, false)

	n := 0
	for i, b := range readmeScrapeConfigs(t) {
		name := fmt.Sprintf("README.md, Prometheus configuration, snippet %d", i+1)
		jobs := fleetJobs(t, name, []byte(b))
		checkFleetRelabeling(t, name, jobs, true)
		n += len(jobs)
	}
	if n < 2 {
		t.Errorf("README.md shows %d scrape jobs under Prometheus configuration, want the per-exporter and the aggregate one", n)
	}
}

// readmeScrapeConfigs returns the YAML blocks with scrape_configs in the
// README's Prometheus configuration section.
func readmeScrapeConfigs(t *testing.T) []string {
	t.Helper()
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	const heading = "\n## Prometheus configuration\n"
	i := strings.Index(string(readme), heading)
	if i < 0 {
		t.Fatal("README.md has no Prometheus configuration section")
	}
	section := string(readme[i+len(heading):])
	if j := strings.Index(section, "\n## "); j >= 0 {
		section = section[:j]
	}
	var blocks []string
	for _, m := range regexp.MustCompile("(?s)```yaml\n(.*?)```").FindAllStringSubmatch(section, -1) {
		if strings.Contains(m[1], "scrape_configs:") {
			blocks = append(blocks, m[1])
		}
	}
	return blocks
}

// copyFile copies src to dst.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestExamples_AlertingRules checks the example rules with promtool and runs
// their unit tests, which make every alert fire and stay quiet.
func TestExamples_AlertingRules(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run scripts/install-test-deps.sh (make test does)")
	}
	dir := filepath.Join("examples", "rules")
	for _, args := range [][]string{
		{"check", "rules", "baremetal_sd.rules.yml"},
		{"test", "rules", "baremetal_sd.rules.test.yml"},
	} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %v: %v\n%s", args, err, out)
		}
	}

	data, err := os.ReadFile(filepath.Join(dir, "baremetal_sd.rules.yml"))
	if err != nil {
		t.Fatal(err)
	}
	var rules struct {
		Groups []struct {
			Rules []struct {
				Alert  string `yaml:"alert"`
				Record string `yaml:"record"`
				Expr   string `yaml:"expr"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(data, &rules); err != nil {
		t.Fatal(err)
	}
	promql := parser.NewParser(parser.Options{})
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			expr, err := promql.ParseExpr(r.Expr)
			if err != nil {
				t.Errorf("%s%s: %v", r.Alert, r.Record, err)
				continue
			}
			// An alert on a fleet-wide gauge without max would fire once
			// per replica.
			if err := checkFleetWide(expr, r.Alert != ""); err != nil {
				t.Errorf("%s%s: %v", r.Alert, r.Record, err)
			}
		}
	}
}

// TestExamples_SystemdUnits runs `systemd-analyze verify` on the example
// units, with ExecStart pointed at the built binary so that its existence
// is checked too. verify only warns about unknown or misspelled settings,
// so any output fails the test.
func TestExamples_SystemdUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Fatal("systemd-analyze not found: run scripts/install-test-deps.sh (make test does)")
	}
	bin, err := filepath.Abs("baremetal_sd")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(bin); err != nil {
		// A test binary stands in for it: verify only checks that the
		// ExecStart program exists and is executable.
		bin, err = os.Executable()
		if err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	units, err := filepath.Glob(filepath.Join("examples", "systemd", "*.service"))
	if err != nil || len(units) != 2 {
		t.Fatalf("want the server and agent units, found %v (%v)", units, err)
	}
	// The man page the units name is installed by the package; the package
	// test verifies the installed units with it.
	args := []string{"verify", "--man=no"}
	for _, u := range units {
		data, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		data = bytes.ReplaceAll(data, []byte("/usr/bin/baremetal_sd"), []byte(bin))
		path := filepath.Join(dir, filepath.Base(u))
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		args = append(args, path)
	}
	out, err := exec.Command(analyze, args...).CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) > 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestExamples_SystemdUsers creates the users of baremetal_sd.sysusers in
// a scratch root with systemd-sysusers, and checks that every unit runs as
// one of them, not as a dynamic user (whose UID a transient unit for the
// admin commands would not share), with the user's home as its state
// directory. systemd-analyze verify does not look users up, so this is
// where a unit naming a user nobody creates is caught.
func TestExamples_SystemdUsers(t *testing.T) {
	sysusersBin, err := exec.LookPath("systemd-sysusers")
	if err != nil {
		t.Fatal("systemd-sysusers not found: run scripts/install-test-deps.sh (make test does)")
	}
	conf, err := filepath.Abs(filepath.Join("examples", "systemd", "baremetal_sd.sysusers"))
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(sysusersBin, "--root="+root, conf).CombinedOutput(); err != nil {
		t.Fatalf("systemd-sysusers: %v\n%s", err, out)
	}
	// name:password:uid:gid:gecos:home:shell
	homes := make(map[string]string)
	passwd, err := os.ReadFile(filepath.Join(root, "etc", "passwd"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(passwd)), "\n") {
		f := strings.Split(line, ":")
		if len(f) != 7 {
			t.Fatalf("passwd line %q", line)
		}
		homes[f[0]] = f[5]
	}
	groups := make(map[string]bool)
	group, err := os.ReadFile(filepath.Join(root, "etc", "group"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(group)), "\n") {
		groups[strings.SplitN(line, ":", 2)[0]] = true
	}

	for _, unit := range []string{"baremetal_sd-server.service", "baremetal_sd-agent.service"} {
		t.Run(unit, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join("examples", "systemd", unit))
			if err != nil {
				t.Fatal(err)
			}
			settings := make(map[string][]string)
			for _, line := range strings.Split(string(data), "\n") {
				if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
					settings[k] = append(settings[k], v)
				}
			}
			if v := settings["DynamicUser"]; len(v) > 0 && v[0] != "no" {
				t.Errorf("DynamicUser=%s", v[0])
			}
			user, grp := unitSetting(t, settings, "User"), unitSetting(t, settings, "Group")
			home, ok := homes[user]
			if !ok {
				t.Fatalf("User=%s is not created by baremetal_sd.sysusers (it creates %v)", user, homes)
			}
			if !groups[grp] {
				t.Errorf("Group=%s is not created by baremetal_sd.sysusers", grp)
			}
			if state := "/var/lib/" + unitSetting(t, settings, "StateDirectory"); state != home {
				t.Errorf("StateDirectory is %s, but %s's home is %s", state, user, home)
			}
			for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectoryMode=0700", "UMask=0077"} {
				k, v, _ := strings.Cut(want, "=")
				if unitSetting(t, settings, k) != v {
					t.Errorf("want %s", want)
				}
			}
			if got := settings["CapabilityBoundingSet"]; len(got) != 1 || got[0] != "" {
				t.Errorf("CapabilityBoundingSet=%q, want it empty", got)
			}
		})
	}
	if homes["baremetal_sd"] == "" || homes["baremetal_sd-agent"] == "" || homes["baremetal_sd"] == homes["baremetal_sd-agent"] {
		t.Errorf("want separate server and agent users, got %v", homes)
	}
}

// unitSetting returns the single value of a unit setting.
func unitSetting(t *testing.T, settings map[string][]string, key string) string {
	t.Helper()
	v := settings[key]
	if len(v) != 1 {
		t.Errorf("%s is set %d times, want once", key, len(v))
		return ""
	}
	return v[0]
}

// TestExamples_GrafanaDashboard checks the dashboard's JSON, that every
// panel reads the dashboard's data source, and that every query parses as
// PromQL once Grafana's variables are filled in.
func TestExamples_GrafanaDashboard(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("examples", "grafana", "baremetal_sd-fleet.json"))
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		Expr  string `json:"expr"`
		RefID string `json:"refId"`
	}
	type panel struct {
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		} `json:"datasource"`
		Targets []target `json:"targets"`
	}
	var dash struct {
		UID           string  `json:"uid"`
		SchemaVersion int     `json:"schemaVersion"`
		Panels        []panel `json:"panels"`
		Templating    struct {
			List []struct {
				Name string `json:"name"`
				Type string `json:"type"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard is not valid JSON: %v", err)
	}
	if dash.UID == "" || dash.SchemaVersion < 39 {
		t.Errorf("uid %q, schemaVersion %d: want a uid and schema 39 or later", dash.UID, dash.SchemaVersion)
	}
	vars := map[string]string{"$__rate_interval": "5m", "$__interval": "1m"}
	for _, v := range dash.Templating.List {
		if v.Type == "query" {
			vars["$"+v.Name] = ".+"
		}
	}
	promql := parser.NewParser(parser.Options{})
	queries := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" || p.Datasource.Type != "prometheus" {
			t.Errorf("panel %q does not use the ${datasource} variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			expr := tg.Expr
			for v, val := range vars {
				expr = strings.ReplaceAll(expr, v, val)
			}
			if strings.Contains(expr, "$") {
				t.Errorf("panel %q query %s: undefined variable in %q", p.Title, tg.RefID, tg.Expr)
				continue
			}
			parsed, err := promql.ParseExpr(expr)
			if err != nil {
				t.Errorf("panel %q query %s: %v", p.Title, tg.RefID, err)
				continue
			}
			if err := checkFleetWide(parsed, false); err != nil {
				t.Errorf("panel %q query %s: %v", p.Title, tg.RefID, err)
			}
			queries++
		}
	}
	if queries < 10 {
		t.Errorf("only %d queries", queries)
	}
}

// serverDataDir makes dir/data as the server's first start does: a CA and
// a serving certificate, so that web configs pointing at data/ load.
func serverDataDir(t *testing.T, dir string) string {
	t.Helper()
	data := filepath.Join(dir, "data")
	authority, _, err := ca.LoadOrCreate(data)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := authority.EnsureServingCert(data, []string{"localhost"}, time.Hour); err != nil {
		t.Fatal(err)
	}
	return data
}

// checkWebConfig copies a web config next to a fresh data directory and
// loads it twice: as the server does (web.LoadConfig, strict) and with
// exporter-toolkit's own validation, which also loads the certificate, key
// and client CA the file names.
func checkWebConfig(t *testing.T, path string) *toolkitweb.Config {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	serverDataDir(t, dir)
	cfgPath := filepath.Join(dir, filepath.Base(path))
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := web.LoadConfig(cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := toolkitweb.Validate(cfgPath); err != nil {
		t.Fatalf("exporter-toolkit rejects %s: %v", path, err)
	}
	if !cfg.TLSConfig.IsEnabled() {
		t.Errorf("%s: TLS is not configured", path)
	}
	if cfg.TLSConfig.ClientAuth != "VerifyClientCertIfGiven" {
		t.Errorf("%s: client_auth_type %q; agents and Prometheus need VerifyClientCertIfGiven", path, cfg.TLSConfig.ClientAuth)
	}
	return cfg
}

// TestExamples_WebConfig loads the web config shipped at the top of the
// tarball against a data directory as the server creates it.
func TestExamples_WebConfig(t *testing.T) {
	cfg := checkWebConfig(t, "web-config.yml")
	if len(cfg.Users) != 0 {
		t.Errorf("web-config.yml enables basic auth for %d users; it should only show how", len(cfg.Users))
	}
}

// TestExamples_BasicAuthWebConfig loads the basic-auth web config as the
// server does and checks that its example password is the documented one.
func TestExamples_BasicAuthWebConfig(t *testing.T) {
	cfg := checkWebConfig(t, filepath.Join("examples", "web-config-basic-auth.yml"))
	hash, ok := cfg.Users["operator"]
	if !ok {
		t.Fatalf("no user operator in %v", cfg.Users)
	}
	if err := bcrypt.CompareHashAndPassword([]byte(hash), []byte("change-me")); err != nil {
		t.Errorf("the documented example password does not match: %v", err)
	}
}

// TestExamples_TarballFiles checks that .promu.yml puts into the release
// tarball every file the README's install section says it holds, plus the
// top-level web-config.yml, and that each of them exists.
func TestExamples_TarballFiles(t *testing.T) {
	data, err := os.ReadFile(".promu.yml")
	if err != nil {
		t.Fatal(err)
	}
	var promu struct {
		Tarball struct {
			Files []string `yaml:"files"`
		} `yaml:"tarball"`
	}
	if err := yaml.Unmarshal(data, &promu); err != nil {
		t.Fatal(err)
	}
	files := make(map[string]bool)
	for _, f := range promu.Tarball.Files {
		files[f] = true
		if _, err := os.Stat(f); err != nil {
			t.Errorf(".promu.yml tarball file %s: %v", f, err)
		}
	}

	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	// "A tarball holds the binary, `LICENSE`, ... and `examples/`."
	sentence := regexp.MustCompile(`(?s)A\s+tarball\s+holds\s+the\s+binary,(.*?)\.\s`).FindSubmatch(readme)
	if sentence == nil {
		t.Fatal("README.md no longer says what a tarball holds")
	}
	want := []string{"web-config.yml"}
	for _, m := range regexp.MustCompile("`([^`]+)`").FindAllSubmatch(sentence[1], -1) {
		want = append(want, strings.TrimSuffix(string(m[1]), "/"))
	}
	if len(want) < 5 {
		t.Fatalf("README lists only %v in the tarball", want[1:])
	}
	for _, f := range want {
		if !files[f] {
			t.Errorf("the tarball should hold %s (README.md, install section), but .promu.yml lists only %v", f, promu.Tarball.Files)
		}
	}
}

// fleetWide are the server metrics that describe the whole registry: with
// several replicas on one etcd cluster each replica reports the same
// fleet, so summing them over instances multiplies the fleet.
var fleetWide = map[string]bool{
	"baremetal_sd_registry_agents": true,
	"baremetal_sd_exporters":       true,
}

// checkFleetWide fails when a fleet-wide gauge is aggregated across
// replicas by anything but max or min: the innermost aggregation around
// each of its selectors must be max or min, and with needAgg there must be
// one. Counters of requests a replica handled (registrations, heartbeats,
// http_sd requests) are its own and are rightly summed.
func checkFleetWide(expr parser.Expr, needAgg bool) error {
	var err error
	parser.Inspect(expr, func(n parser.Node, path []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok || !fleetWide[vs.Name] || err != nil {
			return nil
		}
		for i := len(path) - 1; i >= 0; i-- {
			agg, ok := path[i].(*parser.AggregateExpr)
			if !ok {
				continue
			}
			if agg.Op != parser.MAX && agg.Op != parser.MIN {
				err = fmt.Errorf("%s is reported whole by every replica; %s over it counts the fleet once per replica: take max by (job, ...) first", vs.Name, agg.Op)
			}
			return nil
		}
		if needAgg {
			err = fmt.Errorf("%s is reported whole by every replica: take max by (job, ...) so that replicas do not each count", vs.Name)
		}
		return nil
	})
	return err
}

// TestExamples_PrometheusShardedConfig checks examples/prometheus-sharded.yml
// with promtool next to real certificate, key and token files, runs its
// relabeling like that of prometheus.yml, and checks that its http_sd URLs
// are valid queries of one scrape shard of the same shard count, as the
// comment's sed line makes them for the other servers.
func TestExamples_PrometheusShardedConfig(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		t.Fatal("promtool not found: run scripts/install-test-deps.sh (make test does)")
	}
	const name = "prometheus-sharded.yml"
	src, err := os.ReadFile(filepath.Join("examples", name))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	data := serverDataDir(t, dir)
	if _, _, err := ca.LoadOrCreateTokenKey(data); err != nil {
		t.Fatal(err)
	}
	certs := filepath.Join(dir, "certs")
	if err := server.IssueClientCert(data, "prometheus-0", ca.RoleDiscovery, time.Hour, certs); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), src, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(promtool, "check", "config", filepath.Join(dir, name)).CombinedOutput(); err != nil {
		t.Fatalf("promtool check config: %v\n%s", err, out)
	}

	jobs := fleetJobs(t, "examples/"+name, src)
	if len(jobs) != 2 {
		t.Fatalf("examples/%s: %d http_sd jobs, want node and baremetal_sd_agent", name, len(jobs))
	}
	checkFleetRelabeling(t, "examples/"+name, jobs, true)

	for server := range 3 {
		// The substitution the file's comment tells operators to make.
		cfg := strings.ReplaceAll(string(src), "shard=0&", fmt.Sprintf("shard=%d&", server))
		for _, job := range fleetJobs(t, "examples/"+name, []byte(cfg)) {
			for _, sd := range job.HTTPSDConfigs {
				u, err := url.Parse(sd.URL)
				if err != nil {
					t.Fatal(err)
				}
				f, err := httpsd.ParseFilter(u.Query())
				if err != nil {
					t.Errorf("server %d, job %s: %s: %v", server, job.JobName, sd.URL, err)
					continue
				}
				if want := (httpsd.ScrapeShard{Index: server, Count: 3}); f.Shard != want {
					t.Errorf("server %d, job %s: shard %+v, want %+v", server, job.JobName, f.Shard, want)
				}
			}
		}
	}
}

// TestExamples_PrometheusTrustsOneCAPerRole: http_sd and the server are
// verified by the server CA only, agents by the agent CA only. A scrape
// job trusting ca.crt could not verify agents, and http_sd trusting the
// agent CA would accept any enrolled host as the discovery server. Jobs
// through tunnels (proxy_url) verify the server as the proxy and the agent
// as the target with one tls_config: they trust the bundle of both, with
// HTTP/2 off (docs/tunnels.md).
func TestExamples_PrometheusTrustsOneCAPerRole(t *testing.T) {
	for _, name := range []string{"prometheus.yml", "prometheus-sharded.yml"} {
		t.Run(name, func(t *testing.T) { checkOneCAPerRole(t, name) })
	}
}

func checkOneCAPerRole(t *testing.T, name string) {
	data, err := os.ReadFile(filepath.Join("examples", name))
	if err != nil {
		t.Fatal(err)
	}
	var cfg struct {
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			ProxyURL      string `yaml:"proxy_url"`
			EnableHTTP2   *bool  `yaml:"enable_http2"`
			HTTPSDConfigs []struct {
				TLSConfig struct {
					CAFile string `yaml:"ca_file"`
				} `yaml:"tls_config"`
			} `yaml:"http_sd_configs"`
			TLSConfig struct {
				CAFile string `yaml:"ca_file"`
			} `yaml:"tls_config"`
		} `yaml:"scrape_configs"`
	}
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	var checked int
	for _, job := range cfg.ScrapeConfigs {
		for _, sd := range job.HTTPSDConfigs {
			if sd.TLSConfig.CAFile != "certs/"+ca.CertFile {
				t.Errorf("job %s: http_sd trusts %q, want certs/%s", job.JobName, sd.TLSConfig.CAFile, ca.CertFile)
			}
			checked++
		}
		switch {
		case len(job.HTTPSDConfigs) > 0 && job.ProxyURL != "":
			if job.TLSConfig.CAFile != "certs/"+server.TunnelCAFile {
				t.Errorf("job %s scrapes agents through tunnels trusting %q, want certs/%s", job.JobName, job.TLSConfig.CAFile, server.TunnelCAFile)
			}
			if job.EnableHTTP2 == nil || *job.EnableHTTP2 {
				t.Errorf("job %s scrapes through tunnels without enable_http2: false", job.JobName)
			}
		case len(job.HTTPSDConfigs) > 0 && job.TLSConfig.CAFile != "certs/"+ca.AgentCACertFile:
			t.Errorf("job %s scrapes agents trusting %q, want certs/%s", job.JobName, job.TLSConfig.CAFile, ca.AgentCACertFile)
		case job.JobName == "baremetal_sd_server" && job.TLSConfig.CAFile != "certs/"+ca.CertFile:
			t.Errorf("job %s scrapes the server trusting %q, want certs/%s", job.JobName, job.TLSConfig.CAFile, ca.CertFile)
		}
	}
	if checked == 0 {
		t.Fatal("no http_sd_configs found")
	}
}
