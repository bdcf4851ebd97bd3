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
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/relabel"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
)

// TestSegmenter_ConversionMarksCutAsRead: the segments of the conversions'
// output (protobuf written as text or OpenMetrics from the wire bytes and
// through client_model families, text and OpenMetrics converted into each
// other) are the same whether the writer marks the lines for the segmenter
// or the segmenter reads them: for node_exporter's payload as protobuf,
// quoted and escaped names, OpenMetrics with units, histograms and
// summaries, a family large enough to be written in parts, metrics that a
// rule moves into a family of their own, and segments cut into parts.
// Every line but the # EOF is marked.
func TestSegmenter_ConversionMarksCutAsRead(t *testing.T) {
	// A histogram and a summary whose names need quotes: escaped with
	// values, their series names are no longer the family's name with a
	// suffix (U__h_2e_ist__bucket), and a reader of the lines cuts them
	// into families of their own.
	utf8Histogram := &dto.MetricFamily{Name: proto.String("h.ist"), Help: proto.String("A histogram."), Type: dto.MetricType_HISTOGRAM.Enum(), Metric: []*dto.Metric{
		{Label: []*dto.LabelPair{pair("a", "1")}, Histogram: &dto.Histogram{SampleCount: proto.Uint64(3), SampleSum: proto.Float64(2), Bucket: []*dto.Bucket{
			{UpperBound: proto.Float64(1), CumulativeCount: proto.Uint64(1)}, {UpperBound: proto.Float64(2), CumulativeCount: proto.Uint64(2)},
		}}},
		{Label: []*dto.LabelPair{pair("a", "2")}, Histogram: &dto.Histogram{SampleCount: proto.Uint64(1), SampleSum: proto.Float64(1)}},
	}}
	utf8Summary := &dto.MetricFamily{Name: proto.String("s.um"), Type: dto.MetricType_SUMMARY.Enum(), Metric: []*dto.Metric{
		{Summary: &dto.Summary{SampleCount: proto.Uint64(3), SampleSum: proto.Float64(2), Quantile: []*dto.Quantile{
			{Quantile: proto.Float64(0.5), Value: proto.Float64(1)}, {Quantile: proto.Float64(0.9), Value: proto.Float64(2)},
		}}},
	}}
	var fixture bytes.Buffer
	for _, mf := range append(protobufFixture(), nativeHistogramFamily(), largeFamily(3000), utf8Histogram, utf8Summary) {
		if _, err := protodelim.MarshalTo(&fixture, mf); err != nil {
			t.Fatal(err)
		}
	}
	node := nodeExporterFixture(t)
	inputs := []struct {
		name string
		in   Format
		body []byte
	}{
		{"node", FormatProtobuf, toProtoB(t, node)},
		{"fixture", FormatProtobuf, fixture.Bytes()},
		{"quoted names", FormatProtobuf, toProtoB(t, []byte(escapingText))},
		{"rich", FormatProtobuf, toProtoB(t, []byte(richText))},
		{"node text", FormatText, node},
		{"rich text", FormatText, []byte(richText)},
		{"quoted names text", FormatText, []byte(escapingText)},
		{"OpenMetrics", FormatOpenMetrics, []byte(richOM)},
	}
	for _, in := range inputs {
		for _, out := range []Format{FormatText, FormatOpenMetrics} {
			if out == in.in {
				continue
			}
			for _, rules := range []string{"", renameSome} {
				for _, esc := range []model.EscapingScheme{model.NoEscaping, model.UnderscoreEscaping, model.ValueEncodingEscaping} {
					for _, part := range []int{segmentPartBytes, 64} {
						t.Run(fmt.Sprintf("%s/%v/rules=%t/%v/part=%d", in.name, out, rules != "", esc, part), func(t *testing.T) {
							rs := parseRules(t, rules)
							read, _, err := conversionCuts(newPipeline("e", "exporter", rs, defaultLimits), in.body, in.in, out, esc, part, false)
							if err != nil {
								t.Fatal(err)
							}
							if len(read) < 2 {
								t.Fatalf("%d segments", len(read))
							}
							marked, rest, err := conversionCuts(newPipeline("e", "exporter", rs, defaultLimits), in.body, in.in, out, esc, part, true)
							if err != nil {
								t.Fatal(err)
							}
							if rest != nil {
								t.Fatalf("lines not marked: %q", clip(rest))
							}
							sameCuts(t, marked, read)
							if in.in == FormatProtobuf {
								// Through client_model families (the
								// stream path off), which write the same
								// bytes in other writes.
								off := func() *pipeline {
									p := newPipeline("e", "exporter", rs, defaultLimits)
									p.pbStream.off = true
									return p
								}
								read, _, err := conversionCuts(off(), in.body, in.in, out, esc, part, false)
								if err != nil {
									t.Fatal(err)
								}
								families, rest, err := conversionCuts(off(), in.body, in.in, out, esc, part, true)
								if err != nil || rest != nil {
									t.Fatalf("through families: %v, lines not marked: %q", err, clip(rest))
								}
								sameCuts(t, families, read)
							}
						})
					}
				}
			}
		}
	}
}

// markChecker is a segmenter that checks the marks of each marked write
// (in order, each at the end of a line) and keeps in rest what the marks
// of a write leave at its end other than # EOF, and plain writes.
type markChecker struct {
	*segmenter
	rest []byte
	bad  error
}

func (c *markChecker) Write(b []byte) (int, error) {
	c.rest = append(c.rest, b...)
	return c.segmenter.Write(b)
}

func (c *markChecker) writeMarked(buf []byte, from int, marks []lineMark) error {
	at := from
	for _, m := range marks {
		if m.end <= at || m.end > len(buf) || buf[m.end-1] != '\n' {
			c.bad = fmt.Errorf("mark %+v after %d in a write of %d bytes from %d", m, at, len(buf), from)
		}
		at = m.end
	}
	if tail := buf[at:]; len(tail) > 0 && string(tail) != "# EOF\n" {
		c.rest = append(c.rest, tail...)
	}
	return c.segmenter.writeMarked(buf, from, marks)
}

// conversionCuts relays body in format in through p as out into a
// segmenter with parts of part bytes, which the writer marks the lines for
// (marked) or which reads them, and returns the segments; rest is what
// the marked writes left unmarked, other than # EOF.
func conversionCuts(p *pipeline, body []byte, in, out Format, esc model.EscapingScheme, part int, marked bool) (cuts []segmentCut, rest []byte, err error) {
	sg := cuttingSegmenter(part, &cuts)
	// A writer without writeMarked is written plain.
	var w io.Writer = struct{ io.Writer }{sg}
	checker := &markChecker{segmenter: sg}
	if marked {
		w = checker
	}
	if err := p.relay(bytes.NewReader(body), in, in.ContentType(), out, esc, w); err != nil {
		return nil, nil, err
	}
	if err := sg.close(); err != nil {
		return nil, nil, err
	}
	return cuts, checker.rest, checker.bad
}

// compareConversionSegments checks that the aggregate endpoint's segmenter
// cuts a conversion's output alike whether the writer marks its lines or
// the segmenter reads them (see TestSegmenter_ConversionMarksCutAsRead).
func compareConversionSegments(t *testing.T, data []byte, in, out Format, rules []*relabel.Config, label string, esc model.EscapingScheme, lim limits) {
	t.Helper()
	for _, part := range []int{segmentPartBytes, 64} {
		read, _, rerr := conversionCuts(newPipeline("fuzz", label, rules, lim), data, in, out, esc, part, false)
		marked, rest, merr := conversionCuts(newPipeline("fuzz", label, rules, lim), data, in, out, esc, part, true)
		if (rerr == nil) != (merr == nil) {
			t.Fatalf("%v to %v, part %d: read: %v, marked: %v", in, out, part, rerr, merr)
		}
		if rerr != nil {
			continue
		}
		if rest != nil {
			t.Fatalf("%v to %v, part %d: lines not marked: %q\ninput %q", in, out, part, clip(rest), clip(data))
		}
		if !slices.Equal(marked, read) {
			sameCuts(t, marked, read)
		}
		if in != FormatProtobuf {
			continue
		}
		// Protobuf through client_model families (the stream path off),
		// which write the same bytes (compareStream) in other writes.
		off := func() *pipeline {
			p := newPipeline("fuzz", label, rules, lim)
			p.pbStream.off = true
			return p
		}
		read, _, rerr = conversionCuts(off(), data, in, out, esc, part, false)
		families, rest, err := conversionCuts(off(), data, in, out, esc, part, true)
		if (rerr == nil) != (err == nil) || rest != nil {
			t.Fatalf("%v to %v through families, part %d: read: %v, marked: %v, lines not marked: %q\ninput %q", in, out, part, rerr, err, clip(rest), clip(data))
		}
		if !slices.Equal(families, read) {
			sameCuts(t, families, read)
		}
	}
}

// BenchmarkAggregateConversion is BenchmarkAggregateOverhead for the
// conversions the aggregate endpoint makes of a protobuf exporter for a
// scraper of text or OpenMetrics, with relaycompare's escaping: two
// pipelines relay the payload as protobuf in parallel, with the exporter
// label, into io.Discard (relay_only) or into segmenters whose batches one
// merge takes (segmented_and_merged).
func BenchmarkAggregateConversion(b *testing.B) {
	for _, pl := range []struct {
		name string
		text []byte
	}{{"node", nodeExporterFixture(b)}, {"30k", syntheticText(300, 100)}} {
		body := toProtoB(b, pl.text)
		for _, out := range []Format{FormatText, FormatOpenMetrics} {
			ps := []*pipeline{newPipeline("a", "exporter", nil, defaultLimits), newPipeline("b", "exporter", nil, defaultLimits)}
			relay := func(p *pipeline, w io.Writer) error {
				return p.relay(bytes.NewReader(body), FormatProtobuf, ContentTypeProtobuf, out, model.UnderscoreEscaping, w)
			}
			name := fmt.Sprintf("%s/protobuf_to_%s", pl.name, map[Format]string{FormatText: "text", FormatOpenMetrics: "openmetrics"}[out])
			benchAggregateOverhead(b, name+"/", ps, relay, out == FormatOpenMetrics)
		}
	}
}
