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
	"io"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/relabel"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// frameCut is a frame as the framer passed it on: what the merge reads of
// it, and its bytes.
type frameCut struct {
	name             string
	typ              dto.MetricType
	help, unit       string
	hasHelp, hasUnit bool
	start, body, end int
	metrics          [2]int
	split            bool
	bytes            string
}

// frameChecker is a framer that checks the marks of each marked write: in
// order, each frame from the end of the one before, together the whole
// write. It counts in unmarked the bytes the marks of a write leave out,
// and plain writes.
type frameChecker struct {
	*framer
	unmarked int
	bad      error
}

func (c *frameChecker) Write(b []byte) (int, error) {
	c.unmarked += len(b)
	return c.framer.Write(b)
}

func (c *frameChecker) writeFrames(buf []byte, from int, marks []frameMark) error {
	at := from
	for _, m := range marks {
		if m.start != at || m.start+m.end > len(buf) {
			c.bad = fmt.Errorf("mark %+v after %d in a write of %d bytes from %d", m, at, len(buf), from)
		}
		at = m.start + m.end
	}
	c.unmarked += len(buf) - at
	return c.framer.writeFrames(buf, from, marks)
}

// frameCuts relays body in format in through p as protobuf into a framer,
// which the writers mark the frames for (marked) or which reads them, and
// returns the frames. A marked relay fails unless every frame was marked
// and taken as marked.
func frameCuts(p *pipeline, body []byte, in Format, esc model.EscapingScheme, marked bool) ([]frameCut, error) {
	var cuts []frameCut
	fr := newFramer(func(b *frameBatch) error {
		for _, f := range b.parts {
			cuts = append(cuts, frameCut{
				name: f.name, typ: f.typ, help: string(f.help), unit: string(f.unit), hasHelp: f.help != nil, hasUnit: f.unit != nil,
				start: f.start, body: f.body, end: f.end, metrics: f.metrics, split: f.split, bytes: string(b.buf[f.start:f.end]),
			})
		}
		return nil
	})
	// A writer without writeFrames is written plain.
	var w io.Writer = struct{ io.Writer }{fr}
	checker := &frameChecker{framer: fr}
	if marked {
		w = checker
	}
	if err := p.relay(bytes.NewReader(body), in, in.ContentType(), FormatProtobuf, esc, w); err != nil {
		return cuts, err
	}
	if err := fr.close(); err != nil {
		return cuts, err
	}
	switch {
	case !marked:
		return cuts, nil
	case checker.bad != nil:
		return cuts, checker.bad
	case checker.unmarked > 0 || fr.read > 0:
		return cuts, fmt.Errorf("%d bytes not marked, %d frames read", checker.unmarked, fr.read)
	}
	return cuts, nil
}

// sameFrames fails t unless the frames marked are those read.
func sameFrames(t *testing.T, marked, read []frameCut) {
	t.Helper()
	if len(marked) != len(read) {
		t.Fatalf("%d frames marked, %d read", len(marked), len(read))
	}
	for i := range read {
		if marked[i] != read[i] {
			m, r := marked[i], read[i]
			m.bytes, r.bytes = fmt.Sprintf("%q", clip([]byte(m.bytes))), fmt.Sprintf("%q", clip([]byte(r.bytes)))
			t.Fatalf("frame %d marked %+v, read %+v", i, m, r)
		}
	}
}

// compareFrames checks that the aggregate endpoint's framer cuts the same
// frames from a relay's protobuf output whether the writers mark them or
// the framer reads them, through the stream path and, for protobuf input,
// through client_model families.
func compareFrames(t *testing.T, data []byte, in Format, rules []*relabel.Config, label string, esc model.EscapingScheme, lim limits) {
	t.Helper()
	for _, off := range []bool{false, true} {
		if off && in != FormatProtobuf {
			continue
		}
		pipe := func() *pipeline {
			p := newPipeline("fuzz", label, rules, lim)
			p.pbStream.off = off
			return p
		}
		read, rerr := frameCuts(pipe(), data, in, esc, false)
		marked, merr := frameCuts(pipe(), data, in, esc, true)
		if (rerr == nil) != (merr == nil) {
			t.Fatalf("%v, stream path off %t: read: %v, marked: %v\ninput %q", in, off, rerr, merr, clip(data))
		}
		if rerr != nil {
			continue
		}
		if !slices.Equal(marked, read) {
			sameFrames(t, marked, read)
		}
	}
}

// TestFramer_MarksFrameAsRead: the frames of the relay's protobuf output
// (protobuf from the wire bytes and through client_model families, text
// and OpenMetrics converted) are the same whether the writers mark them
// for the framer or the framer reads them: for node_exporter's payload as
// protobuf and as text, the 30,000-sample payload, UTF-8 and quoted names,
// classic and native histograms, summaries, units, unknown fields, rules
// that move metrics into families of their own, and families written in
// parts. Every frame is marked, and taken as marked.
func TestFramer_MarksFrameAsRead(t *testing.T) {
	utf8Histogram := &dto.MetricFamily{Name: proto.String("h.ist"), Help: proto.String("A histogram."), Type: dto.MetricType_HISTOGRAM.Enum(), Unit: proto.String("seconds"), Metric: []*dto.Metric{
		{Label: []*dto.LabelPair{pair("a.b", "1")}, Histogram: &dto.Histogram{SampleCount: proto.Uint64(3), SampleSum: proto.Float64(2), Bucket: []*dto.Bucket{
			{UpperBound: proto.Float64(1), CumulativeCount: proto.Uint64(1)}, {UpperBound: proto.Float64(2), CumulativeCount: proto.Uint64(2)},
		}}},
	}}
	utf8Summary := &dto.MetricFamily{Name: proto.String("s.um"), Help: proto.String(""), Type: dto.MetricType_SUMMARY.Enum(), Metric: []*dto.Metric{
		{Summary: &dto.Summary{SampleCount: proto.Uint64(3), SampleSum: proto.Float64(2), Quantile: []*dto.Quantile{
			{Quantile: proto.Float64(0.5), Value: proto.Float64(1)},
		}}},
	}}
	utf8Gauge := &dto.MetricFamily{Name: proto.String("g.auge"), Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{
		{Label: []*dto.LabelPair{pair("fstype", "tmpfs"), pair("ä", "ö")}, Gauge: &dto.Gauge{Value: proto.Float64(1)}},
		{Label: []*dto.LabelPair{pair("fstype", "ext4")}, Gauge: &dto.Gauge{Value: proto.Float64(2)}},
	}}
	var fixture bytes.Buffer
	for _, mf := range append(protobufFixture(), nativeHistogramFamily(), largeFamily(3000), utf8Histogram, utf8Summary, utf8Gauge) {
		if _, err := protodelim.MarshalTo(&fixture, mf); err != nil {
			t.Fatal(err)
		}
	}
	// A family header with a field that client_model does not know.
	unknown := &dto.MetricFamily{Name: proto.String("unknown_field"), Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(1)}}}}
	ub, err := proto.Marshal(unknown)
	if err != nil {
		t.Fatal(err)
	}
	ub = protowire.AppendVarint(protowire.AppendTag(ub, 9, protowire.VarintType), 7)
	fixture.Write(protowire.AppendBytes(nil, ub))
	var large bytes.Buffer
	if _, err := protodelim.MarshalTo(&large, largeFamily(20000)); err != nil {
		t.Fatal(err)
	}
	var largeText strings.Builder
	largeText.WriteString("# HELP big_total Many.\n# TYPE big_total counter\n")
	for i := range 20000 {
		fmt.Fprintf(&largeText, "big_total{fstype=%q,path=\"/p/%d\"} %d\n", []string{"ext4", "tmpfs"}[i%2], i, i)
	}
	largeText.WriteString("# TYPE small gauge\nsmall 1\n")
	node := nodeExporterFixture(t)
	synthetic := syntheticText(300, 100)
	inputs := []struct {
		name string
		in   Format
		body []byte
	}{
		{"node", FormatProtobuf, toProtoB(t, node)},
		{"30k", FormatProtobuf, toProtoB(t, synthetic)},
		{"fixture", FormatProtobuf, fixture.Bytes()},
		{"large family", FormatProtobuf, large.Bytes()},
		{"quoted names", FormatProtobuf, toProtoB(t, []byte(escapingText))},
		{"rich", FormatProtobuf, toProtoB(t, []byte(richText))},
		{"node text", FormatText, node},
		{"30k text", FormatText, synthetic},
		{"large family text", FormatText, []byte(largeText.String())},
		{"rich text", FormatText, []byte(richText)},
		{"quoted names text", FormatText, []byte(escapingText)},
		{"OpenMetrics", FormatOpenMetrics, []byte(richOM)},
	}
	for _, in := range inputs {
		for _, rules := range []string{"", renameSome} {
			for _, esc := range []model.EscapingScheme{model.NoEscaping, model.UnderscoreEscaping, model.ValueEncodingEscaping} {
				for _, off := range []bool{false, true} {
					if off && in.in != FormatProtobuf {
						continue
					}
					t.Run(fmt.Sprintf("%s/rules=%t/%v/stream=%t", in.name, rules != "", esc, !off), func(t *testing.T) {
						rs := parseRules(t, rules)
						pipe := func() *pipeline {
							p := newPipeline("e", "exporter", rs, defaultLimits)
							p.pbStream.off = off
							return p
						}
						read, err := frameCuts(pipe(), in.body, in.in, esc, false)
						if err != nil {
							t.Fatal(err)
						}
						if len(read) < 2 {
							t.Fatalf("%d frames", len(read))
						}
						marked, err := frameCuts(pipe(), in.body, in.in, esc, true)
						if err != nil {
							t.Fatal(err)
						}
						sameFrames(t, marked, read)
					})
				}
			}
		}
	}
}

// TestFamilyMark_AsTheFramerReads: the mark familyMark makes of a family
// proto.Marshal wrote is what the framer reads of the frame, also for
// families without a name, help or type, with empty strings, with a type
// client_model does not know and with unknown fields, which proto.Marshal
// writes last.
func TestFamilyMark_AsTheFramerReads(t *testing.T) {
	decoded := func(unknown bool, fields ...[]byte) *dto.MetricFamily {
		b, err := proto.Marshal(&dto.MetricFamily{Name: proto.String("u"), Help: proto.String("h"), Unit: proto.String("s"), Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(1)}}}})
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range fields {
			b = append(b, f...)
		}
		mf := &dto.MetricFamily{}
		if err := proto.Unmarshal(b, mf); err != nil {
			t.Fatal(err)
		}
		if got := len(mf.ProtoReflect().GetUnknown()) > 0; got != unknown {
			t.Fatalf("unknown fields: %t", got)
		}
		return mf
	}
	varint := func(num protowire.Number, v uint64) []byte {
		return protowire.AppendVarint(protowire.AppendTag(nil, num, protowire.VarintType), v)
	}
	gauge := []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(1)}}, {Label: []*dto.LabelPair{pair("a", "b")}, Gauge: &dto.Gauge{Value: proto.Float64(2)}}}
	families := map[string]*dto.MetricFamily{
		"no name":         {Type: dto.MetricType_GAUGE.Enum(), Metric: gauge},
		"no type":         {Name: proto.String("n"), Metric: gauge},
		"empty strings":   {Name: proto.String(""), Help: proto.String(""), Unit: proto.String(""), Type: dto.MetricType_GAUGE.Enum(), Metric: gauge},
		"long help":       {Name: proto.String("n"), Help: proto.String(strings.Repeat("h", 300)), Type: dto.MetricType_GAUGE.Enum(), Unit: proto.String("bytes"), Metric: gauge},
		"native":          nativeHistogramFamily(),
		"unknown type":    decoded(false, varint(fieldFamilyType, 99)),
		"negative type":   decoded(false, varint(fieldFamilyType, 1<<64-1)),
		"unknown field":   decoded(true, varint(9, 7)),
		"metric as value": decoded(true, varint(fieldFamilyMetric, 1)),
	}
	for i, mf := range protobufFixture() {
		families[fmt.Sprint("fixture ", i)] = mf
	}
	for name, mf := range families {
		t.Run(name, func(t *testing.T) {
			buf := []byte("before")
			start := len(buf)
			buf = protowire.AppendVarint(buf, uint64(proto.Size(mf)))
			body := len(buf)
			buf, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend(buf, mf)
			if err != nil {
				t.Fatal(err)
			}
			fr := &framer{buf: buf[start:]}
			frames, end := fr.marked(nil, []frameMark{func() frameMark { m := familyMark(mf, buf, start, body); m.start -= start; return m }()})
			if len(frames) != 1 || end != len(buf)-start {
				t.Fatalf("mark %+v not taken", familyMark(mf, buf, start, body))
			}
			var read frame
			read.start, read.body, read.end = 0, body-start, len(buf)-start
			if err := read.scan(buf[body:]); err != nil {
				t.Fatal(err)
			}
			got := frames[0]
			if string(got.rawName) != string(read.rawName) || got.typ != read.typ || got.metrics != read.metrics || got.split != read.split ||
				string(got.help) != string(read.help) || (got.help == nil) != (read.help == nil) ||
				string(got.unit) != string(read.unit) || (got.unit == nil) != (read.unit == nil) {
				t.Fatalf("marked %+v\nread   %+v", got, read)
			}
		})
	}
}

// TestFramer_WrongMarksRead: the framer takes marks only as long as each
// frame starts where the one before ended and its places are in it; from
// a mark that is not so on, and after a write that ended within a frame,
// it reads the frames.
func TestFramer_WrongMarksRead(t *testing.T) {
	var body bytes.Buffer
	for _, name := range []string{"a", "b", "c"} {
		if _, err := protodelim.MarshalTo(&body, &dto.MetricFamily{Name: proto.String(name), Type: dto.MetricType_GAUGE.Enum(), Metric: []*dto.Metric{{Gauge: &dto.Gauge{Value: proto.Float64(1)}}}}); err != nil {
			t.Fatal(err)
		}
	}
	frameLen := body.Len() / 3
	right := func(i int) frameMark {
		at := i * frameLen
		return frameMark{start: at, body: 1, end: frameLen, name: [2]int{2, 3}, typ: dto.MetricType_GAUGE, metrics: [2]int{5, frameLen - 1}}
	}
	tests := []struct {
		name     string
		marks    func() []frameMark
		from     int // bytes written plain before
		wantRead int
	}{
		{"right", func() []frameMark { return []frameMark{right(0), right(1), right(2)} }, 0, 0},
		{"two of three", func() []frameMark { return []frameMark{right(0), right(1)} }, 0, 1},
		{"gap", func() []frameMark { return []frameMark{right(0), right(2)} }, 0, 2},
		{"name past the frame", func() []frameMark {
			m := right(1)
			m.name[1] = m.end
			return []frameMark{right(0), m, right(2)}
		}, 0, 2},
		{"metrics past the frame", func() []frameMark {
			m := right(0)
			m.metrics[1] = frameLen
			return []frameMark{m, right(1), right(2)}
		}, 0, 3},
		{"end past the write", func() []frameMark {
			m := right(2)
			m.end++
			return []frameMark{right(0), right(1), m}
		}, 0, 1},
		{"after part of a frame", func() []frameMark { return []frameMark{right(0), right(1), right(2)} }, 2, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			fr := newFramer(func(b *frameBatch) error {
				for _, f := range b.parts {
					got = append(got, fmt.Sprintf("%s %v %d-%d %v", f.name, f.typ, f.start, f.end, f.metrics))
				}
				return nil
			})
			data := body.Bytes()
			if tt.from > 0 {
				if _, err := fr.Write(data[:tt.from]); err != nil {
					t.Fatal(err)
				}
			}
			buf := append(fr.frameBuffer(), data[tt.from:]...)
			if err := fr.writeFrames(buf, tt.from, tt.marks()); err != nil {
				t.Fatal(err)
			}
			if err := fr.close(); err != nil {
				t.Fatal(err)
			}
			var want []string
			for i, name := range []string{"a", "b", "c"} {
				want = append(want, fmt.Sprintf("%s GAUGE %d-%d [5 %d]", name, i*frameLen, (i+1)*frameLen, frameLen-1))
			}
			if !slices.Equal(got, want) || fr.read != tt.wantRead {
				t.Fatalf("frames %q, %d read; want %q, %d read", got, fr.read, want, tt.wantRead)
			}
		})
	}
}
