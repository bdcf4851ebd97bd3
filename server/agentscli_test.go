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
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
)

func TestPrintable(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"plain", "db1.example.com", "db1.example.com"},
		{"empty", "", ""},
		{"spaces and punctuation", "rack 4, row B", "rack 4, row B"},
		{"non-ASCII letters stay readable", "Zürich-東京-Ελλάδα", "Zürich-東京-Ελλάδα"},
		{"emoji", "🔥", "🔥"},
		{"ANSI clear screen", "\x1b[2J\x1b[Hok", `\x1b[2J\x1b[Hok`},
		{"ANSI color", "\x1b[31mred\x1b[0m", `\x1b[31mred\x1b[0m`},
		{"OSC 52 clipboard write", "\x1b]52;c;ZXZpbA==\a", `\x1b]52;c;ZXZpbA==\a`},
		{"newline forges a row", "a\nb", `a\nb`},
		{"carriage return overwrites", "safe\revil", `safe\revil`},
		{"tab forges a column", "a\tb", `a\tb`},
		{"backspace", "ab\b", `ab\b`},
		{"DEL", "a\x7f", `a\x7f`},
		{"C1 CSI", "a\u009b2J", `a\u009b2J`},
		{"bidi override", "abc\u202edef", `abc\u202edef`},
		{"zero width space", "a\u200bb", `a\u200bb`},
		{"invalid UTF-8", "a\xffb\xc3", `a\xffb\xc3`},
		{"backslash is escaped", `C:\temp`, `C:\\temp`},
		{"literal escape text stays distinct", `\x1b`, `\\x1b`},
		{"replacement character itself", "a\uFFFDb", "a\uFFFDb"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := printable(tc.in); got != tc.want {
				t.Errorf("printable(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestAgentsCLI_PrintHostile prints agents whose hostname, address, labels
// and exporter names an attacker controls: the table must not carry a
// single control byte, must keep one row per agent, and JSON must keep the
// values as they are.
func TestAgentsCLI_PrintHostile(t *testing.T) {
	now := time.Now()
	agents := []discovery.AgentView{
		{
			Agent: store.Agent{
				ID:        "a1",
				Hostname:  "evil\x1b[2J\x1b[H",
				Address:   "10.0.0.1\r",
				Port:      9956,
				Labels:    labels.FromStrings("role", "web\nb2\tfake\thealthy", "note", "\x1b]0;pwned\a\u202e"),
				Exporters: []protocol.Exporter{{Name: "node\x1b[8m", Path: "/exporters/node/metrics"}},
				LastSeen:  now,
				// A server validates reasons; the table must not rely on it.
				ExporterHealth: []protocol.ExporterHealth{{Name: "node\x1b[8m", State: protocol.ExporterDown, Reason: "boom\x1b[2J\nforged row"}},
			},
			State: discovery.StateHealthy,
		},
		{
			Agent: store.Agent{ID: "a2", Hostname: "zürich", Address: "10.0.0.2", Port: 9956, LastSeen: now},
			State: discovery.StateMaintenance,
		},
	}

	var table bytes.Buffer
	if err := (AgentsCLI{Output: "table"}).print(&table, agents); err != nil {
		t.Fatal(err)
	}
	out := table.String()
	for i := 0; i < len(out); i++ {
		if c := out[i]; (c < 0x20 && c != '\n') || c == 0x7f {
			t.Errorf("table holds control byte %#x at %d:\n%q", c, i, out)
		}
	}
	if strings.Contains(out, "\u202e") {
		t.Errorf("table holds a bidi override:\n%q", out)
	}
	if rows := strings.Count(out, "\n"); rows != 1+len(agents) {
		t.Errorf("table has %d lines, want a header and %d rows:\n%s", rows, len(agents), out)
	}
	for _, want := range []string{
		`evil\x1b[2J\x1b[H`, `10.0.0.1\r:9956`, `role=web\nb2\tfake\thealthy`,
		`note=\x1b]0;pwned\a\u202e`, `node\x1b[8m:down`, `node\x1b[8m: boom\x1b[2J\nforged row`, "zürich", "maintenance",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}

	var js bytes.Buffer
	if err := (AgentsCLI{Output: "json"}).print(&js, agents); err != nil {
		t.Fatal(err)
	}
	var back []discovery.AgentView
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON output does not parse: %v\n%s", err, js.String())
	}
	if len(back) != 2 || back[0].Hostname != agents[0].Hostname || back[0].Labels.Get("role") != agents[0].Labels.Get("role") {
		t.Errorf("JSON output changed the values: %+v", back)
	}
}

// TestAgentsCLI_ShowsExporterHealth: each exporter with its state, and why
// and since when the failing ones fail; an agent that reports no health has
// its exporters unknown.
func TestAgentsCLI_ShowsExporterHealth(t *testing.T) {
	now := time.Now()
	exps := []protocol.Exporter{{Name: "node", Path: "/exporters/node/metrics"}, {Name: "mysqld", Path: "/exporters/mysqld/metrics"}}
	agents := []discovery.AgentView{
		{Agent: store.Agent{ID: "a1", Hostname: "db1", Address: "10.0.0.1", Port: 9956, LastSeen: now, Exporters: exps,
			ExporterHealth: []protocol.ExporterHealth{
				{Name: "node", State: protocol.ExporterUp},
				{Name: "mysqld", State: protocol.ExporterDown, Reason: "connect: upstream unreachable: connection refused", Since: now.Add(-5 * time.Minute)},
			}}, State: discovery.StateHealthy},
		{Agent: store.Agent{ID: "a2", Hostname: "db2", Address: "10.0.0.2", Port: 9956, LastSeen: now, Exporters: exps}, State: discovery.StateHealthy},
	}
	var out bytes.Buffer
	if err := (AgentsCLI{Output: "table"}).print(&out, agents); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out.String(), "\n")
	if !strings.Contains(lines[0], "EXPORTER ERRORS") {
		t.Fatalf("header %q", lines[0])
	}
	for _, tc := range []struct {
		line int
		want []string
	}{
		{1, []string{"node:up,mysqld:down", "mysqld: connect: upstream unreachable: connection refused (for 5m0s)"}},
		{2, []string{"node:unknown,mysqld:unknown"}},
	} {
		for _, w := range tc.want {
			if !strings.Contains(lines[tc.line], w) {
				t.Errorf("row %d lacks %q:\n%s", tc.line, w, out.String())
			}
		}
	}
	if !strings.HasSuffix(strings.TrimSpace(lines[2]), "-") {
		t.Errorf("an agent without failures shows errors:\n%s", out.String())
	}
}
