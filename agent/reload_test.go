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

package agent

import (
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/baremetal-sd/baremetal_sd/collector"
)

func TestReloader_KeepsConfigOnBadFile(t *testing.T) {
	const good = "exporters:\n  - name: node\n    url: http://127.0.0.1:9100/metrics\nlabels:\n  rack: r1\n"
	for _, tc := range []struct {
		name, file, webConfig, wantErr string
	}{
		{name: "unknown key", file: good + "exporter_lable: x\n", wantErr: "exporter_lable"},
		{name: "label set twice", file: good + "  role: x\n", wantErr: `label "role" is also set with --agent.label`},
		{name: "bad label name", file: "labels:\n  \"a-b\": x\n", wantErr: "agent labels"},
		{name: "reserved exporter", file: "exporters:\n  - name: agent\n    url: http://127.0.0.1:1/\n", wantErr: "reserved"},
		{name: "broken web config", file: good, webConfig: "tls_server_config: [", wantErr: "--web.config.file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			relayFile := filepath.Join(dir, "relay.yml")
			webFile := filepath.Join(dir, "web.yml")
			write := func(path, content string) {
				t.Helper()
				if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			write(relayFile, good)
			write(webFile, "")
			reg := prometheus.NewRegistry()
			cfg := Config{RelayConfigFile: relayFile, Labels: map[string]string{"role": "db"}}
			cfg.normalizeTunables()
			r := newReloader(cfg, reg, collector.NewAgent(reg, registrationStates()), false, webFile)
			first, err := r.load()
			if err != nil {
				t.Fatal(err)
			}
			before := r.current.Load()

			write(relayFile, tc.file)
			if tc.webConfig != "" {
				write(webFile, tc.webConfig)
			}
			err = r.reload()
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("reload error %v, want one containing %q", err, tc.wantErr)
			}
			if r.current.Load() != before {
				t.Error("a failed reload replaced the running configuration")
			}
			if got := lastReloadSuccessful(t, r); got != 0 {
				t.Errorf("config_last_reload_successful = %v, want 0", got)
			}
			select {
			case reg := <-r.updates:
				t.Errorf("a failed reload sent a registration: %+v", reg)
			default:
			}
			if first.labels["rack"] != "r1" || first.labels["role"] != "db" {
				t.Errorf("labels of the first load: %v", first.labels)
			}

			write(relayFile, strings.Replace(good, "r1", "r2", 1))
			write(webFile, "")
			if err := r.reload(); err != nil {
				t.Fatalf("reload of a good file: %v", err)
			}
			if got := lastReloadSuccessful(t, r); got != 1 {
				t.Errorf("config_last_reload_successful = %v, want 1", got)
			}
			select {
			case reg := <-r.updates:
				if reg.labels["rack"] != "r2" {
					t.Errorf("registration after reload has labels %v", reg.labels)
				}
			default:
				t.Error("a changed label was not sent to the lifecycle")
			}
		})
	}
}

func TestInfoCollector_FollowsReload(t *testing.T) {
	dir := t.TempDir()
	relayFile := filepath.Join(dir, "relay.yml")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(relayFile, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("labels:\n  rack: r1\n")
	reg := prometheus.NewRegistry()
	cfg := Config{RelayConfigFile: relayFile, Hostname: "db1", Labels: map[string]string{"role": "db"}}
	cfg.normalizeTunables()
	r := newReloader(cfg, reg, collector.NewAgent(reg, registrationStates()), false, "")
	if _, err := r.load(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, file, want string
	}{
		{"first load", "", `baremetal_sd_agent_info{hostname="db1",label_rack="r1",label_role="db",version=""} 1`},
		{"after reload", "labels:\n  rack: r2\n  zone: z\n", `baremetal_sd_agent_info{hostname="db1",label_rack="r2",label_role="db",label_zone="z",version=""} 1`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.file != "" {
				write(tc.file)
				if err := r.reload(); err != nil {
					t.Fatal(err)
				}
			}
			want := "# HELP baremetal_sd_agent_info Metadata of this host's agent, always 1: version, hostname, and each agent label as label_<name>.\n# TYPE baremetal_sd_agent_info gauge\n" + tc.want + "\n"
			if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "baremetal_sd_agent_info"); err != nil {
				t.Error(err)
			}
		})
	}
}

// lastReloadSuccessful reads the reload gauge as a scrape would see it.
func lastReloadSuccessful(t *testing.T, r *reloader) float64 {
	t.Helper()
	families, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "baremetal_sd_agent_config_last_reload_successful" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("baremetal_sd_agent_config_last_reload_successful is not registered")
	return 0
}

// TestReloader_MemoryLimitCoversSeriesCaches: the soft memory limit is the
// configured one plus the series caches of the exporters with rules, and
// follows a reload that adds rules.
func TestReloader_MemoryLimitCoversSeriesCaches(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	const (
		plain     = "exporters:\n  - name: node\n    url: http://127.0.0.1:9100/metrics\n  - name: app\n    url: http://127.0.0.1:9101/metrics\n"
		withRules = plain + "    metric_relabel_configs:\n      - target_label: env\n        replacement: prod\nseries_cache_bytes: 1048576\n"
	)
	relayFile := filepath.Join(t.TempDir(), "relay.yml")
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(relayFile, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(plain)
	reg := prometheus.NewRegistry()
	cfg := Config{RelayConfigFile: relayFile, MemoryLimit: 12 << 20}
	cfg.normalizeTunables()
	r := newReloader(cfg, reg, collector.NewAgent(reg, registrationStates()), false, "")
	if _, err := r.load(); err != nil {
		t.Fatal(err)
	}
	if got := debug.SetMemoryLimit(-1); got != 12<<20 {
		t.Errorf("memory limit without rules %d, want %d", got, 12<<20)
	}
	write(withRules)
	if err := r.reload(); err != nil {
		t.Fatal(err)
	}
	if got, want := debug.SetMemoryLimit(-1), int64(12<<20+1<<20); got != want {
		t.Errorf("memory limit with one exporter's rules %d, want %d", got, want)
	}
}
