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
	"fmt"
	"strings"
	"testing"

	"github.com/prometheus/common/model"
)

func TestNewFastRules_Eligible(t *testing.T) {
	tests := []struct {
		name, rules string
		fast        bool
	}{
		{"constant label", "- target_label: env\n  replacement: prod", true},
		{"two constant labels, one set twice", "- target_label: env\n  replacement: a\n- target_label: dc\n  replacement: x\n- target_label: env\n  replacement: b", true},
		{"drop by name", "- source_labels: [__name__]\n  regex: go_.*\n  action: drop", true},
		{"keep by name", "- source_labels: [__name__]\n  regex: node_.*\n  action: keep", true},
		{"drop by another label", "- source_labels: [mode]\n  regex: idle\n  action: drop", false},
		{"drop by name and label", "- source_labels: [__name__, mode]\n  regex: a;b\n  action: drop", false},
		{"replace from a label", "- source_labels: [instance]\n  target_label: host", false},
		{"replacement with a reference", "- target_label: env\n  replacement: ${1}x", false},
		{"regex that may not match the empty value", "- target_label: env\n  regex: .+\n  replacement: prod", false},
		{"empty replacement deletes", "- target_label: env\n  replacement: ''", false},
		{"sets the name", "- target_label: __name__\n  replacement: other", false},
		{"sets the exporter label", "- target_label: exporter\n  replacement: other", false},
		{"quoted target", "- target_label: my.env\n  replacement: prod", false},
		{"labeldrop", "- regex: code\n  action: labeldrop", false},
		{"hashmod", "- source_labels: [__name__]\n  modulus: 2\n  target_label: shard\n  action: hashmod", false},
	}
	for _, tt := range tests {
		f := newFastRules(parseRules(t, tt.rules), "exporter")
		if (f != nil) != tt.fast {
			t.Errorf("%s: fast %v, want %v", tt.name, f != nil, tt.fast)
		}
	}
}

// TestFastRules_SameAsGeneral relays inputs through the fast form of rules
// and through the general one (labels built, relabel.ProcessBuilder): the
// series must be the same.
func TestFastRules_SameAsGeneral(t *testing.T) {
	inputs := map[string][]byte{
		"relabel":          []byte(relabelText),
		"protobuf relabel": textToProtobuf(t, relabelText),
		"protobuf fixture": protobufBody(t, protobufFixture()...),
		"rich":             testdataFile(t, "rich.txt"),
		"edge":             testdataFile(t, "edge.txt"),
		"node_exporter":    nodeExporterFixture(t),
		"label clash":      []byte("up{env=\"dev\"} 1\nup{environment=\"x\"} 2\n{\"quoted.name\"} 3\nup{exporter=\"theirs\"} 4\n"),
	}
	rules := []string{
		"- target_label: env\n  replacement: prod",
		"- target_label: env\n  replacement: 'a \"quoted\" \\\\ value'\n- source_labels: [__name__]\n  regex: (node_cpu|temp|lat)_.*\n  action: drop",
		"- source_labels: [__name__]\n  regex: (node|rpc|escapes|up).*\n  action: keep\n- target_label: env\n  replacement: prod\n- source_labels: [__name__]\n  regex: node_cpu.*\n  action: drop",
		"- source_labels: [__name__]\n  regex: '(lat|req_size_bytes|rpc_seconds|mixed_seconds|rpc_latency_seconds)(_bucket)?'\n  action: drop",
		"- source_labels: [__name__]\n  regex: '.*_(sum|count)'\n  action: drop\n- target_label: env\n  replacement: prod",
	}
	for name, body := range inputs {
		for i, rc := range rules {
			for _, label := range []string{"", "exporter"} {
				in, ct := FormatText, "text/plain"
				if strings.HasPrefix(name, "protobuf") {
					in, ct = FormatProtobuf, ContentTypeProtobuf
				}
				for _, out := range []Format{FormatText, FormatProtobuf} {
					t.Run(fmt.Sprintf("%s/%d/%q/%v", name, i, label, out), func(t *testing.T) {
						cfgs := parseRules(t, rc)
						var fast, general bytes.Buffer
						p := newPipeline("e", label, cfgs, defaultLimits)
						if p.fastRules == nil {
							t.Fatal("rules not taken by the fast path")
						}
						if err := p.relay(bytes.NewReader(body), in, ct, out, model.NoEscaping, &fast); err != nil {
							t.Fatal(err)
						}
						q := newPipeline("e", label, cfgs, defaultLimits)
						q.fastRules, q.splice = nil, q.splice[:0]
						if label != "" {
							q.splice = appendQuoted([]byte(label+"="), "e")
						}
						if err := q.relay(bytes.NewReader(body), in, ct, out, model.NoEscaping, &general); err != nil {
							t.Fatal(err)
						}
						want := relabeledSeries(t, general.Bytes(), out.ContentType(), nil)
						if len(want) == 0 {
							t.Fatal("no series")
						}
						sameSeries(t, want, relabeledSeries(t, fast.Bytes(), out.ContentType(), nil))
						if p.samples != q.samples {
							t.Errorf("samples %d, want %d", p.samples, q.samples)
						}
					})
				}
			}
		}
	}
}

// TestFastRules_DecidedBounded: the cache of verdicts per name stays at
// maxDecided however many names an exposition has.
func TestFastRules_DecidedBounded(t *testing.T) {
	var b strings.Builder
	const n = maxDecided + 1000
	for i := range n {
		fmt.Fprintf(&b, "m_%d 1\n", i)
	}
	p := newPipeline("e", "", parseRules(t, "- source_labels: [__name__]\n  regex: m_1.*\n  action: drop"), defaultLimits)
	var out bytes.Buffer
	if err := p.relay(strings.NewReader(b.String()), FormatText, "text/plain", FormatText, model.NoEscaping, &out); err != nil {
		t.Fatal(err)
	}
	if got := len(p.fastRules.decided); got > maxDecided {
		t.Errorf("%d verdicts cached, at most %d wanted", got, maxDecided)
	}
	kept := 0
	for i := range n {
		if !strings.HasPrefix(fmt.Sprint(i), "1") {
			kept++
		}
	}
	if got := len(series(t, out.Bytes(), "text/plain")); got != kept || p.samples != kept {
		t.Errorf("%d series (%d counted), want %d", got, p.samples, kept)
	}
}

// TestRarestByte_IsAByteOfTheName: the byte the direct path searches for
// before it searches for the exporter label is one of the label's, so that
// its absence proves the label's; and the rarest one.
func TestRarestByte_IsAByteOfTheName(t *testing.T) {
	tests := []struct {
		name string
		want byte
	}{
		{"exporter", 'x'},
		{"job", 'j'},
		{"e", 'e'},
		{"Exporter", 'E'}, // not listed: rarer than any listed byte
		{"a.b", 'b'},
		{"", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := rarestByte(tt.name)
			if got != tt.want {
				t.Errorf("rarestByte(%q) = %q, want %q", tt.name, got, tt.want)
			}
			if tt.name != "" && !strings.Contains(tt.name, string(got)) {
				t.Errorf("rarestByte(%q) = %q, not a byte of it", tt.name, got)
			}
		})
	}
}
