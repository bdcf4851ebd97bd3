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
	"math"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/relabel"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// compareStream relays protobuf data to out through client_model
// families (the stream path off) and fails unless that writes want, what
// the stream path wrote, or fails alike (streamErr).
func compareStream(t testing.TB, data []byte, in Format, ct string, out Format, rules []*relabel.Config, label string, esc model.EscapingScheme, lim limits, want []byte, streamErr error) {
	t.Helper()
	p := newPipeline("fuzz", label, rules, lim)
	p.pbStream.off = true
	var old bytes.Buffer
	err := p.relay(bytes.NewReader(data), in, ct, out, esc, &old)
	if (err == nil) != (streamErr == nil) {
		t.Fatalf("%v, rules %d, label %q, %v: families path error %v, stream path error %v\ninput %q", out, len(rules), label, esc, err, streamErr, clip(data))
	}
	if got := old.Bytes(); err == nil && !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		from := max(0, i-64)
		t.Fatalf("%v, rules %d, label %q, %v: stream path output differs at byte %d of %d (families %d)\ninput %q\nfamilies ...%q\nstream   ...%q",
			out, len(rules), label, esc, i, len(want), len(got), clip(data), clip(got[from:]), clip(want[from:]))
	}
}

// protobufFixtureBytes is protobufFixture and a native histogram, framed.
func protobufFixtureBytes(t testing.TB) []byte {
	var b bytes.Buffer
	for _, mf := range append(protobufFixture(), nativeHistogramFamily()) {
		if _, err := protodelim.MarshalTo(&b, mf); err != nil {
			t.Fatal(err)
		}
	}
	return b.Bytes()
}

// largeFamily is one counter family of n metrics, whose decoded size
// exceeds partBytes when n is large: the families path emits it in parts.
func largeFamily(n int) *dto.MetricFamily {
	mf := &dto.MetricFamily{Name: proto.String("big_total"), Help: proto.String("Many."), Type: dto.MetricType_COUNTER.Enum(), Unit: proto.String("bytes")}
	for i := range n {
		mf.Metric = append(mf.Metric, &dto.Metric{
			Label:   []*dto.LabelPair{pair("fstype", []string{"ext4", "tmpfs"}[i%2]), pair("path", fmt.Sprintf("/p/%d", i))},
			Counter: &dto.Counter{Value: proto.Float64(float64(i))},
		})
	}
	return mf
}

// TestProtobufStream_SameOutputAsFamilies: relaying protobuf to protobuf,
// text and OpenMetrics from the wire bytes writes exactly what decoding
// every family into client_model, relabeling and encoding it writes, on
// the corpus, with every rule set, with and without the exporter label and
// escaping; and the stream path takes the families it is meant for.
func TestProtobufStream_SameOutputAsFamilies(t *testing.T) {
	var large bytes.Buffer
	if _, err := protodelim.MarshalTo(&large, largeFamily(20000)); err != nil {
		t.Fatal(err)
	}
	inputs := []struct {
		name     string
		data     []byte
		streamed int // families the stream path takes without rules or label
	}{
		{"node_exporter", toProtoB(t, nodeExporterFixture(t)), 200},
		{"synthetic", toProtoB(t, syntheticText(20, 50)), 20},
		{"fixture", protobufFixtureBytes(t), 2},
		{"large_family_in_parts", large.Bytes(), 1},
		// Timestamps, negative ones too, and values that need escapes.
		{"timestamps_and_escapes", toProtoB(t, []byte("# HELP g A \\ gauge.\n# TYPE g gauge\ng{x=\"q\\\"\\\\\\n\",y=\"1\"} 1.5 1700000000123\ng{x=\"2\"} -3 5\n# TYPE c_total counter\nc_total NaN 1\nu +Inf\n")), 3},
	}
	ruleSets := map[string]string{"none": "", "one_label": oneLabel, "realistic": realisticRules, "label_rules": labelRules, "cache_rules": cacheRules, "rename_some": renameSome}
	for i, r := range fuzzRules {
		ruleSets[fmt.Sprintf("fuzz_%d", i)] = r
	}
	lim := limits{maxLine: 4096, maxFrame: 16 << 20, maxMetric: 1 << 20}
	for _, in := range inputs {
		for rname, r := range ruleSets {
			rules := parseRules(t, r)
			for _, out := range []Format{FormatProtobuf, FormatText, FormatOpenMetrics} {
				for _, label := range []string{"", "exporter"} {
					for _, esc := range []model.EscapingScheme{model.NoEscaping, model.UnderscoreEscaping} {
						t.Run(fmt.Sprintf("%s/%s/%v/%q/%v", in.name, rname, out, label, esc), func(t *testing.T) {
							p := newPipeline("fuzz", label, rules, lim)
							var got bytes.Buffer
							if err := p.relay(bytes.NewReader(in.data), FormatProtobuf, ContentTypeProtobuf, out, esc, &got); err != nil {
								t.Fatal(err)
							}
							if r == "" && label == "" && esc == model.NoEscaping && p.pbStream.streamed < in.streamed {
								t.Errorf("the stream path took %d families, want at least %d", p.pbStream.streamed, in.streamed)
							}
							compareStream(t, in.data, FormatProtobuf, ContentTypeProtobuf, out, rules, label, esc, lim, got.Bytes(), nil)
						})
					}
				}
			}
		}
	}
}

// clip shortens what a failure prints.
func clip(b []byte) []byte { return b[:min(len(b), 400)] }

// TestTextToProtobufWire_SameOutputAsFamilies: relaying text to protobuf
// with the metrics of counters, gauges and untyped families written as
// wire bytes writes exactly what building client_model families and
// marshaling them writes, on the corpus, with every rule set, with and
// without the exporter label and escaping; and the wire path takes the
// families it is meant for.
func TestTextToProtobufWire_SameOutputAsFamilies(t *testing.T) {
	var large bytes.Buffer
	large.WriteString("# HELP big_total Many.\n# TYPE big_total counter\n")
	for i := range 20000 {
		fmt.Fprintf(&large, "big_total{fstype=%q,path=\"/p/%d\"} %d\n", []string{"ext4", "tmpfs"}[i%2], i, i)
	}
	inputs := []struct {
		name  string
		data  []byte
		wired int // families the wire path takes without rules or label
	}{
		{"node_exporter", nodeExporterFixture(t), 200},
		{"synthetic", syntheticText(20, 50), 20},
		{"rich", []byte(richText), 1},
		{"relabel", []byte(relabelText), 1},
		{"escaping", []byte(escapingText), 1},
		{"large_family", large.Bytes(), 1},
		{"type_changes", []byte("# TYPE a counter\na 1\n# TYPE a gauge\na 2\n# HELP a Again.\na 3\n"), 2},
		{"timestamps_and_escapes", []byte("# HELP g A \\\\ gauge.\n# TYPE g gauge\ng{x=\"q\\\"\\\\\\n\",y=\"1\"} 1.5 1700000000123\ng{x=\"2\"} -3 5\n# TYPE c_total counter\nc_total NaN 1\nu +Inf\nu{\"a.b\"=\"1\"} -1\n{\"utf8.name\",a=\"b\"} 1\n"), 3},
		// Names on either side of the exporter label's, one that has
		// its name (kept as exported_exporter), empty values, one of
		// them of a name that comes twice (relabel drops both).
		{"label_order", []byte("# TYPE m gauge\nm{a=\"1\",exporteq=\"2\",exporters=\"3\",z=\"4\"} 1\nm{exporter=\"x\",b=\"\"} 2\nm{exporter=\"\",c=\"1\"} 3\nm{\"ä\"=\"1\",\"A\"=\"2\",\"e.x\"=\"3\"} 4\nm{} 5\nm{c=\"\",c=\"1\",d=\"2\"} 6\n# TYPE h histogram\nh_bucket{le=\"+Inf\",x=\"1\"} 1\nh_sum{x=\"1\"} 1\nh_count{x=\"1\"} 1\n"), 1},
	}
	ruleSets := map[string]string{"none": "", "one_label": oneLabel, "realistic": realisticRules, "label_rules": labelRules, "cache_rules": cacheRules}
	for i, r := range fuzzRules {
		ruleSets[fmt.Sprintf("fuzz_%d", i)] = r
	}
	lim := limits{maxLine: 4096, maxFrame: 16 << 20, maxMetric: 1 << 20}
	const ct = "text/plain; version=0.0.4"
	for _, in := range inputs {
		for rname, r := range ruleSets {
			rules := parseRules(t, r)
			for _, label := range []string{"", "exporter"} {
				for _, esc := range []model.EscapingScheme{model.NoEscaping, model.UnderscoreEscaping} {
					t.Run(fmt.Sprintf("%s/%s/%q/%v", in.name, rname, label, esc), func(t *testing.T) {
						p := newPipeline("fuzz", label, rules, lim)
						var got bytes.Buffer
						if err := p.relay(bytes.NewReader(in.data), FormatText, ct, FormatProtobuf, esc, &got); err != nil {
							t.Fatal(err)
						}
						if r == "" && label == "" && p.assembler.wired < in.wired {
							t.Errorf("the wire path wrote %d families, want at least %d", p.assembler.wired, in.wired)
						}
						// Without rules, the wire path writes the
						// exporter label into the metrics itself.
						if r == "" && label != "" && p.assembler.labeled == 0 {
							t.Error("no metric got the exporter label from the wire path")
						}
						compareStream(t, in.data, FormatText, ct, FormatProtobuf, rules, label, esc, lim, got.Bytes(), nil)
					})
				}
			}
		}
	}
}

func TestScanMetric_ExporterLabelAt(t *testing.T) {
	var mb []byte
	mb = appendLabelPair(mb, "b", "1")
	afterB := len(mb)
	mb = appendLabelPair(mb, "d", "exporter")
	labelsEnd := len(mb)
	mb = protowire.AppendTag(mb, 2, protowire.BytesType)
	mb = protowire.AppendVarint(mb, 9)
	mb = protowire.AppendTag(mb, 1, protowire.Fixed64Type)
	mb = protowire.AppendFixed64(mb, math.Float64bits(1))
	tests := []struct {
		label string
		want  int
	}{
		{"a", 0},         // before every name
		{"c", afterB},    // between b and d
		{"z", labelsEnd}, // after every name
		{"b", -1},        // taken: relabeled instead
		{"d", -1},        // taken, the last one
		{"exporter", labelsEnd},
	}
	for _, tt := range tests {
		t.Run(tt.label, func(t *testing.T) {
			s := &pbStream{label: tt.label}
			shape, ok := s.scanMetric(mb, 2, false, true)
			if !ok {
				t.Fatal("scanMetric refused a well-formed gauge")
			}
			if shape.labelsEnd != labelsEnd || shape.labelAt != tt.want {
				t.Errorf("labelsEnd %d, labelAt %d, want %d, %d", shape.labelsEnd, shape.labelAt, labelsEnd, tt.want)
			}
			// The labels checked apart (the series cache's path) come to
			// the same shape.
			apart, ok := s.scanMetric(mb, 2, false, false)
			if !ok || !s.checkLabels(mb[:apart.labelsEnd], false, &apart) {
				t.Fatal("scanMetric and checkLabels refused a well-formed gauge")
			}
			if apart.size != shape.size || apart.labelAt != shape.labelAt || apart.labelsEnd != shape.labelsEnd {
				t.Errorf("checked apart: %+v, together: %+v", apart, shape)
			}
		})
	}
}

// TestValidBytes_AsValidString: the stream path's check of label bytes
// agrees with validString, which protobufFamily's checks use.
func TestValidBytes_AsValidString(t *testing.T) {
	tests := []string{"", "a", "plain ascii value", "nul\x00", "\x00", "ünïcode", "ünï\x00", "bad\xff", "\xc3", "a\xc3(", "€uro", "\xe2\x82"}
	for _, s := range tests {
		for _, text := range []bool{false, true} {
			t.Run(fmt.Sprintf("%q/text=%v", s, text), func(t *testing.T) {
				if got, want := validBytes([]byte(s), text), validString(s, text); got != want {
					t.Errorf("validBytes %v, validString %v", got, want)
				}
			})
		}
	}
}
