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
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/encoding/protodelim"
)

// familySource is an exporter of the aggregate endpoint as the merge saw
// it before it merged segments and frames: a stream of metric families.
type familySource struct {
	s    *source
	ch   chan *dto.MetricFamily
	head *dto.MetricFamily
}

// mergeFamilies is the aggregate endpoint's merge before segments and
// frames, the reference the tests hold them to: it writes the families of
// all sources in name order, joining same-named ones.
func (r *Relay) mergeFamilies(sources []*familySource, fw *familyWriter) error {
	advance := func(s *familySource) {
		s.head = nil
		if mf, ok := <-s.ch; ok {
			s.head = mf
		}
	}
	for _, s := range sources {
		advance(s)
	}
	written := newNameSet(r.maxNames)
	for {
		var name string
		found := false
		for _, s := range sources {
			if s.head != nil && (!found || s.head.GetName() < name) {
				name, found = s.head.GetName(), true
			}
		}
		if !found {
			return fw.finish()
		}
		var merged *dto.MetricFamily
		for _, s := range sources {
			if s.head == nil || s.head.GetName() != name {
				continue
			}
			switch {
			case !isBare(s.head) && fw.last != name && written.has(name):
				// Bare families (samples without metadata) may come again.
				r.drop(s.s)
			case merged == nil:
				merged = s.head
			case merged.GetType() != s.head.GetType():
				r.drop(s.s)
			default:
				merged.Metric = append(merged.Metric, s.head.Metric...)
				if merged.Help == nil {
					merged.Help = s.head.Help
				}
			}
			advance(s)
		}
		if merged == nil {
			continue
		}
		if !isBare(merged) {
			written.add(name)
		}
		if err := fw.write(merged); err != nil {
			return err
		}
	}
}

// aggregateFrames merges bodies in format in as the aggregate endpoint
// does for a protobuf response, once through the frames of each exporter's
// relayed output and once through metric families (mergeFamilies).
func aggregateFrames(t *testing.T, bodies [][]byte, in Format, ct string, esc model.EscapingScheme) (fast, slow []byte) {
	t.Helper()
	r := &Relay{maxNames: maxWrittenNames}
	run := func(frames bool) []byte {
		sources := make([]*source, len(bodies))
		refs := make([]*familySource, len(bodies))
		errs := make(chan error, len(bodies))
		for i, body := range bodies {
			s := newSource(r, &exporter{cfg: ExporterConfig{Name: fmt.Sprint("e", i)}})
			ref := &familySource{s: s, ch: make(chan *dto.MetricFamily, 2)}
			sources[i], refs[i] = s, ref
			go func() {
				defer close(s.frames.ch)
				defer close(ref.ch)
				p := newPipeline(s.exporter.cfg.Name, "exporter", nil, defaultLimits)
				var err error
				if frames {
					fr := newFramer(func(b *frameBatch) error { s.frames.ch <- b; return nil })
					fr.recycle = s.frames.reuse
					if err = p.relay(bytes.NewReader(body), in, ct, FormatProtobuf, esc, fr); err == nil {
						err = fr.close()
					}
				} else {
					p.escaping = esc
					err = p.families(bytes.NewReader(body), in, ct, FormatProtobuf, func(mf *dto.MetricFamily) error { ref.ch <- mf; return nil })
				}
				errs <- err
			}()
		}
		var buf bytes.Buffer
		var err error
		if frames {
			err = r.mergeFrames(sources, &buf)
		} else {
			fw := &familyWriter{}
			fw.reset(&buf, FormatProtobuf, esc)
			err = r.mergeFamilies(refs, fw)
		}
		if err != nil {
			t.Fatal(err)
		}
		for range bodies {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		return buf.Bytes()
	}
	return run(true), run(false)
}

// TestAggregate_FramesMergeAsFamilies: the aggregate endpoint's frame merge
// writes the bytes that merging metric families writes, for exporters that
// answer protobuf or text, share families, repeat them, conflict in type
// and send families larger than a part.
func TestAggregate_FramesMergeAsFamilies(t *testing.T) {
	node := nodeExporterFixture(t)
	var large bytes.Buffer
	if _, err := protodelim.MarshalTo(&large, largeFamily(20000)); err != nil {
		t.Fatal(err)
	}
	text := [][]string{
		{"# HELP shared_total Shared.\n# TYPE shared_total counter\nshared_total 1\n# TYPE only_a gauge\nonly_a 1\n",
			"# TYPE shared_total counter\nshared_total 2\n# TYPE zz_b gauge\nzz_b 3\n"},
		{"# TYPE x gauge\nx 1\n", "# TYPE x counter\nx 2\n# TYPE y gauge\ny 1\n"},
		{"# TYPE z gauge\nz 1\n# TYPE b gauge\nb 1\nbare 1\n# TYPE a gauge\na 1\n# TYPE b gauge\nb{again=\"1\"} 2\nbare{again=\"1\"} 2\n",
			"bare 3\n# TYPE b gauge\nb 4\n"},
		{"# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n# HELP s A summary.\n# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n",
			"# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n# HELP s Another help.\n# TYPE s summary\ns 1\n"},
	}
	tests := []struct {
		name   string
		in     Format
		bodies [][]byte
	}{
		{"node twice, protobuf", FormatProtobuf, [][]byte{toProtoB(t, node), toProtoB(t, node)}},
		{"node and rich, protobuf", FormatProtobuf, [][]byte{toProtoB(t, node), protobufFixtureBytes(t), toProtoB(t, []byte(relabelText))}},
		{"large family, protobuf", FormatProtobuf, [][]byte{large.Bytes(), large.Bytes(), toProtoB(t, []byte("# TYPE a gauge\na 1\n# TYPE zz gauge\nzz 1\n"))}},
		{"node twice, text", FormatText, [][]byte{node, node}},
	}
	for i, bodies := range text {
		tests = append(tests, struct {
			name   string
			in     Format
			bodies [][]byte
		}{fmt.Sprint("text ", i), FormatText, [][]byte{[]byte(bodies[0]), []byte(bodies[1])}})
		tests = append(tests, struct {
			name   string
			in     Format
			bodies [][]byte
		}{fmt.Sprint("protobuf ", i), FormatProtobuf, [][]byte{toProtoB(t, []byte(bodies[0])), toProtoB(t, []byte(bodies[1]))}})
	}
	for _, tt := range tests {
		for _, esc := range []model.EscapingScheme{model.NoEscaping, model.UnderscoreEscaping} {
			t.Run(fmt.Sprintf("%s/%v", tt.name, esc), func(t *testing.T) {
				ct := "text/plain; version=0.0.4"
				if tt.in == FormatProtobuf {
					ct = ContentTypeProtobuf
				}
				fast, slow := aggregateFrames(t, tt.bodies, tt.in, ct, esc)
				if len(slow) == 0 {
					t.Fatal("no output")
				}
				if !bytes.Equal(fast, slow) {
					i := 0
					for i < len(fast) && i < len(slow) && fast[i] == slow[i] {
						i++
					}
					from := max(0, i-64)
					t.Fatalf("frame merge differs at byte %d of %d (families %d)\nframes   ...%q\nfamilies ...%q", i, len(fast), len(slow), clip(fast[from:]), clip(slow[from:]))
				}
				if err := parses(fast, ContentTypeProtobuf); err != nil {
					t.Fatal(err)
				}
			})
		}
	}
}

// BenchmarkAggregateFrames is BenchmarkAggregateOverhead for a protobuf
// response: two pipelines relay the payload as protobuf, from protobuf
// (identity) or from text (text_to_protobuf), in parallel, with the
// exporter label, into io.Discard (relay_only) or into framers whose
// batches one merge takes (framed_and_merged).
func BenchmarkAggregateFrames(b *testing.B) {
	for _, pl := range []struct {
		name string
		text []byte
	}{{"node", nodeExporterFixture(b)}, {"30k", syntheticText(300, 100)}} {
		for _, in := range []struct {
			name string
			f    Format
			ct   string
			body []byte
		}{{"protobuf", FormatProtobuf, ContentTypeProtobuf, toProtoB(b, pl.text)}, {"text_to_protobuf", FormatText, "text/plain; version=0.0.4", pl.text}} {
			ps := []*pipeline{newPipeline("a", "exporter", nil, defaultLimits), newPipeline("b", "exporter", nil, defaultLimits)}
			relay := func(p *pipeline, w io.Writer) error {
				return p.relay(bytes.NewReader(in.body), in.f, in.ct, FormatProtobuf, model.UnderscoreEscaping, w)
			}
			benchFrameOverhead(b, pl.name+"/"+in.name+"/", ps, relay)
		}
	}
}

// benchFrameOverhead is benchAggregateOverhead with framers and the frame
// merge.
func benchFrameOverhead(b *testing.B, prefix string, ps []*pipeline, relay func(*pipeline, io.Writer) error) {
	benchRelayOnly(b, prefix, ps, relay)
	benchCutAndMerged(b, prefix+"framed_and_merged", ps, relay,
		func(s *source) *feed[frame] { return s.frames },
		func(f *feed[frame]) cutter {
			fr := newFramer(func(b *frameBatch) error { f.ch <- b; return nil })
			fr.recycle, fr.release = f.reuse, f.put
			return fr
		},
		func(r *Relay, sources []*source) error { return r.mergeFrames(sources, io.Discard) })
}
