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
	"os"
	"slices"
	"sync"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
)

// aggregateBoth merges bodies as the aggregate endpoint does, once through
// the segments of each exporter's relayed output (the fast path) and once
// through metric families (mergeFamilies, the path the aggregate endpoint
// took before).
func aggregateBoth(t *testing.T, bodies []string, out Format, partBytes int) (fast, slow []byte) {
	t.Helper()
	r := &Relay{maxNames: maxWrittenNames}
	run := func(segments bool) []byte {
		sources := make([]*source, len(bodies))
		refs := make([]*familySource, len(bodies))
		errs := make(chan error, len(bodies))
		for i, body := range bodies {
			s := newSource(r, &exporter{cfg: ExporterConfig{Name: fmt.Sprint("e", i)}})
			ref := &familySource{s: s, ch: make(chan *dto.MetricFamily, 2)}
			sources[i], refs[i] = s, ref
			go func() {
				defer close(ref.ch)
				defer close(s.segs.ch)
				p := newPipeline(s.exporter.cfg.Name, "exporter", nil, defaultLimits)
				var err error
				if segments {
					sg := newSegmenter(func(b *segmentBatch) error { s.segs.ch <- b; return nil })
					sg.partBytes = partBytes
					sg.recycle = s.segs.reuse
					if err = p.relay(bytes.NewReader([]byte(body)), FormatText, "text/plain", out, model.UnderscoreEscaping, sg); err == nil {
						err = sg.close()
					}
				} else {
					err = p.families(bytes.NewReader([]byte(body)), FormatText, "text/plain", out, func(mf *dto.MetricFamily) error { ref.ch <- mf; return nil })
				}
				errs <- err
			}()
		}
		var buf bytes.Buffer
		var err error
		if segments {
			err = r.mergeSegments(sources, &buf, out == FormatOpenMetrics)
		} else {
			fw := &familyWriter{}
			fw.reset(&buf, out, model.UnderscoreEscaping)
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

// TestAggregate_SegmentsMergeAsFamilies: the aggregate endpoint's segment
// merge gives the series that merging metric families gives, for exporters
// that share families, repeat them, send bare samples and families larger
// than a part, and its output parses.
func TestAggregate_SegmentsMergeAsFamilies(t *testing.T) {
	node, err := os.ReadFile("testdata/node_exporter_e2e.txt")
	if err != nil {
		t.Fatal(err)
	}
	big := &bytes.Buffer{}
	big.WriteString("# HELP big_total Big.\n# TYPE big_total counter\n")
	for i := range 5000 {
		fmt.Fprintf(big, "big_total{i=\"%d\"} %d\n", i, i)
	}
	tests := []struct {
		name   string
		bodies []string
	}{
		{"node twice", []string{string(node), string(node)}},
		{"node and rich", []string{string(node), richText, relabelText}},
		{"shared families", []string{
			"# HELP shared_total Shared.\n# TYPE shared_total counter\nshared_total 1\n# TYPE only_a gauge\nonly_a 1\n",
			"# TYPE shared_total counter\nshared_total 2\n# TYPE zz_b gauge\nzz_b 3\n",
		}},
		{"type conflict", []string{"# TYPE x gauge\nx 1\n", "# TYPE x counter\nx 2\n# TYPE y gauge\ny 1\n"}},
		{"repeated and bare", []string{
			"# TYPE z gauge\nz 1\n# TYPE b gauge\nb 1\nbare 1\n# TYPE a gauge\na 1\n# TYPE b gauge\nb{again=\"1\"} 2\nbare{again=\"1\"} 2\n",
			"bare 3\n# TYPE b gauge\nb 4\n",
		}},
		{"histograms", []string{
			"# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n# TYPE s summary\ns{quantile=\"0.5\"} 1\ns_sum 1\ns_count 1\n",
			"# TYPE h histogram\nh_bucket{le=\"1\"} 0\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
		}},
		{"large family", []string{big.String(), big.String(), "# TYPE a gauge\na 1\n# TYPE zz gauge\nzz 1\n"}},
	}
	for _, tt := range tests {
		for _, out := range []Format{FormatText, FormatOpenMetrics} {
			for _, part := range []int{segmentPartBytes, 64} {
				t.Run(fmt.Sprintf("%s/%v/part=%d", tt.name, out, part), func(t *testing.T) {
					fast, slow := aggregateBoth(t, tt.bodies, out, part)
					ct := out.ContentType()
					if err := parses(fast, ct); err != nil {
						t.Fatalf("segment merge does not parse: %v\n%s", err, fast)
					}
					want, got := series(t, slow, ct), series(t, fast, ct)
					if len(want) == 0 {
						t.Fatal("no series")
					}
					if len(got) != len(want) {
						t.Errorf("%d series, want %d", len(got), len(want))
					}
					sameSeries(t, want, got)
					// Each family's metadata comes once. (Families with
					// metadata and no samples are kept, as an exporter's
					// own endpoint keeps them; the slow path drops them.)
					seen := map[string]bool{}
					for _, line := range bytes.Split(fast, []byte("\n")) {
						if bytes.HasPrefix(line, []byte("# TYPE ")) || bytes.HasPrefix(line, []byte("# HELP ")) {
							key, _, _ := bytes.Cut(line[7:], []byte(" "))
							key = append(line[:7:7], key...)
							if seen[string(key)] {
								t.Errorf("%q comes twice:\n%s", key, fast)
								break
							}
							seen[string(key)] = true
						}
					}
				})
			}
		}
	}
}

// TestRelay_AggregateAnswersInExportersFormat: the aggregate endpoint
// answers in the exporters' format when they all answered in one the
// scraper takes, and in the scraper's best format when they differ.
func TestRelay_AggregateAnswersInExportersFormat(t *testing.T) {
	const prom3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
	text := upstreamServer(t, "text/plain; version=0.0.4", []byte("# TYPE a gauge\na 1\n"))
	text2 := upstreamServer(t, "text/plain; version=0.0.4", []byte("# TYPE a gauge\na 2\n"))
	om := upstreamServer(t, ContentTypeOpenMetrics, []byte("# TYPE a gauge\na 3\n# EOF\n"))
	tests := []struct {
		name   string
		urls   []string
		accept string
		ct     string
	}{
		{"all text, Prometheus 3", []string{text.URL, text2.URL}, prom3, "text/plain; version=1.0.0; charset=utf-8; escaping=allow-utf-8"},
		{"text and OpenMetrics, Prometheus 3", []string{text.URL, om.URL}, prom3, ContentTypeOpenMetrics + "; escaping=allow-utf-8"},
		{"all text, protobuf only", []string{text.URL, text2.URL}, acceptProto, ContentTypeProtobuf + "; escaping=underscores"},
		{"all OpenMetrics, text only", []string{om.URL}, acceptText, "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := "exporters:\n"
			for i, u := range tt.urls {
				cfg += fmt.Sprintf("  - name: e%d\n    url: %s\n", i, u)
			}
			r, _ := newRelay(t, cfg)
			rec := scrape(t, r, "/exporters/metrics", tt.accept)
			if rec.Code != 200 {
				t.Fatalf("status %d: %s", rec.Code, rec.Body)
			}
			ct := rec.Header().Get("Content-Type")
			if ct != tt.ct {
				t.Errorf("Content-Type %q, want %q", ct, tt.ct)
			}
			if got := series(t, rec.Body.Bytes(), ct); len(got) != len(tt.urls) {
				t.Errorf("%d series, want %d: %v", len(got), len(tt.urls), got)
			}
		})
	}
}

// BenchmarkSegmenter cuts node_exporter's relayed output into segments as
// the aggregate endpoint does, in the relay's writes, with the merge's
// buffers given back: the share of the aggregate endpoint spent finding
// families in an exporter's output.
func BenchmarkSegmenter(b *testing.B) {
	node, err := os.ReadFile("testdata/node_exporter_e2e.txt")
	if err != nil {
		b.Fatal(err)
	}
	var out bytes.Buffer
	p := newPipeline("e", "exporter", nil, defaultLimits)
	if err := p.relay(bytes.NewReader(node), FormatText, "text/plain", FormatText, model.NoEscaping, &out); err != nil {
		b.Fatal(err)
	}
	body := out.Bytes()
	var pool sync.Pool
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		f := newFeed[segment](&pool)
		sg := newSegmenter(func(batch *segmentBatch) error {
			f.ch <- batch
			f.rest = nil
			f.advance() // the merge takes it and is done with it
			return nil
		})
		sg.recycle = f.reuse
		for rest := body; len(rest) > 0; {
			n := min(len(rest), chunkBytes)
			if _, err := sg.Write(rest[:n]); err != nil {
				b.Fatal(err)
			}
			rest = rest[n:]
		}
		if err := sg.close(); err != nil {
			b.Fatal(err)
		}
		f.release()
	}
}

// TestSegmenter_MarkedLinesCutAsRead: the segments of the direct path's
// output are the same whether the segmenter is told the lines (writeMarked)
// or reads them (Write), for quoted and escaped names, OpenMetrics and
// text, and families cut into parts.
func TestSegmenter_MarkedLinesCutAsRead(t *testing.T) {
	node, err := os.ReadFile("testdata/node_exporter_e2e.txt")
	if err != nil {
		t.Fatal(err)
	}
	om := "# TYPE a_seconds gauge\n# UNIT a_seconds seconds\n# HELP a_seconds A.\na_seconds 1\n# TYPE c counter\nc_total 1\nc_created 2\n# TYPE \"q.x\" info\n{\"q.x_info\"} 1\n# EOF\n"
	tests := []struct {
		name string
		body string
		in   Format
		esc  model.EscapingScheme
	}{
		{"node", string(node), FormatText, model.UnderscoreEscaping},
		{"node, UTF-8", string(node), FormatText, model.NoEscaping},
		{"rich", richText, FormatText, model.UnderscoreEscaping},
		{"quoted names, UTF-8", escapingText, FormatText, model.NoEscaping},
		{"quoted names, escaped", escapingText, FormatText, model.UnderscoreEscaping},
		{"relabel", relabelText, FormatText, model.UnderscoreEscaping},
		{"OpenMetrics", om, FormatOpenMetrics, model.NoEscaping},
	}
	for _, tt := range tests {
		for _, part := range []int{segmentPartBytes, 64} {
			t.Run(fmt.Sprintf("%s/part=%d", tt.name, part), func(t *testing.T) {
				read, _, err := segmentCuts(newPipeline("e", "exporter", nil, defaultLimits), []byte(tt.body), tt.in, tt.esc, part, false)
				if err != nil {
					t.Fatal(err)
				}
				if len(read) < 2 {
					t.Fatalf("%d segments", len(read))
				}
				marked, split, err := segmentCuts(newPipeline("e", "exporter", nil, defaultLimits), []byte(tt.body), tt.in, tt.esc, part, true)
				if err != nil || split {
					t.Fatalf("error %v, a marked line split %v", err, split)
				}
				sameCuts(t, marked, read)
			})
		}
	}
}

// TestSegmenter_LentBufferNotKept: the direct path writes into the buffer
// the segmenter lends it (markedBuffer) and keeps none of it: the batches
// hold the relayed output, and stay as they are when the same pipeline,
// as a pooled one is, relays again to another writer.
func TestSegmenter_LentBufferNotKept(t *testing.T) {
	node, err := os.ReadFile("testdata/node_exporter_e2e.txt")
	if err != nil {
		t.Fatal(err)
	}
	for _, part := range []int{segmentPartBytes, 64} {
		t.Run(fmt.Sprintf("part=%d", part), func(t *testing.T) {
			var want bytes.Buffer
			if err := newPipeline("e", "exporter", nil, defaultLimits).relay(bytes.NewReader(node), FormatText, "text/plain", FormatText, model.NoEscaping, &want); err != nil {
				t.Fatal(err)
			}
			var batches []*segmentBatch
			sg := newSegmenter(func(b *segmentBatch) error { batches = append(batches, b); return nil })
			sg.partBytes = part
			p := newPipeline("e", "exporter", nil, defaultLimits)
			if err := p.relay(bytes.NewReader(node), FormatText, "text/plain", FormatText, model.NoEscaping, sg); err != nil {
				t.Fatal(err)
			}
			if err := sg.close(); err != nil {
				t.Fatal(err)
			}
			joined := func() []byte {
				var all []byte
				for _, b := range batches {
					for _, g := range b.parts {
						all = append(all, b.buf[g.start:g.end]...)
					}
				}
				return all
			}
			if got := joined(); !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("segments hold %d bytes unlike the relayed output's %d", len(got), want.Len())
			}
			for range 2 {
				if err := p.relay(bytes.NewReader([]byte(richText)), FormatText, "text/plain", FormatText, model.NoEscaping, io.Discard); err != nil {
					t.Fatal(err)
				}
			}
			if got := joined(); !bytes.Equal(got, want.Bytes()) {
				t.Fatal("a later relay of the pipeline wrote into the segments")
			}
		})
	}
}

// segmentCut is a segment as the merge sees it.
type segmentCut struct {
	name, typ  string
	meta, cont bool
	head, body string
}

// countingSegmenter is a segmenter that notes whether a marked write had
// a line with a newline in it: a raw newline in a quoted label value,
// which Prometheus' text parser takes and the direct path copies. The
// marks follow the parser there, and a segmenter reading lines does not.
type countingSegmenter struct {
	*segmenter
	split bool
}

func (c *countingSegmenter) writeMarked(buf []byte, from int, marks []lineMark) error {
	if bytes.Count(buf[from:], []byte("\n")) != len(marks) {
		c.split = true
	}
	return c.segmenter.writeMarked(buf, from, marks)
}

// cuttingSegmenter returns a segmenter with parts of part bytes that
// appends every segment it emits to cuts.
func cuttingSegmenter(part int, cuts *[]segmentCut) *segmenter {
	sg := newSegmenter(func(b *segmentBatch) error {
		for _, g := range b.parts {
			*cuts = append(*cuts, segmentCut{g.name, g.typ, g.meta, g.cont, string(b.buf[g.start:g.metaEnd]), string(b.buf[g.metaEnd:g.end])})
		}
		return nil
	})
	sg.partBytes = part
	return sg
}

// segmentCuts relays body through p into a segmenter with parts of part
// bytes, which the direct path tells its lines (marked) or which reads
// them, and returns the segments; split says a marked line had a newline
// in it.
func segmentCuts(p *pipeline, body []byte, in Format, esc model.EscapingScheme, part int, marked bool) (cuts []segmentCut, split bool, err error) {
	sg := cuttingSegmenter(part, &cuts)
	// A writer without writeMarked makes the direct path write plain.
	var w io.Writer = struct{ io.Writer }{sg}
	counting := &countingSegmenter{segmenter: sg}
	if marked {
		w = counting
	}
	if err := p.relay(bytes.NewReader(body), in, in.ContentType(), in, esc, w); err != nil {
		return nil, false, err
	}
	return cuts, counting.split, sg.close()
}

// sameCuts fails t unless the segments marked are those read.
func sameCuts(t *testing.T, marked, read []segmentCut) {
	t.Helper()
	if len(marked) != len(read) {
		t.Fatalf("%d segments marked, %d read", len(marked), len(read))
	}
	for i := range read {
		if marked[i] != read[i] {
			t.Fatalf("segment %d marked %+v, read %+v", i, marked[i], read[i])
		}
	}
}

// recordedWrite is one write of the direct path, with its marks when it
// was marked.
type recordedWrite struct {
	b      []byte
	marks  []lineMark
	marked bool
}

// markRecorder is a markedWriter that keeps each write, to be written
// again without relaying.
type markRecorder struct {
	buf    []byte
	writes []recordedWrite
}

func (m *markRecorder) Write(b []byte) (int, error) {
	m.writes = append(m.writes, recordedWrite{b: bytes.Clone(b)})
	return len(b), nil
}

func (m *markRecorder) markedBuffer() []byte { return m.buf[:0] }

func (m *markRecorder) writeMarked(buf []byte, from int, marks []lineMark) error {
	m.buf = buf
	rec := recordedWrite{b: bytes.Clone(buf[from:]), marks: slices.Clone(marks), marked: true}
	for i := range rec.marks {
		rec.marks[i].end -= from
	}
	m.writes = append(m.writes, rec)
	return nil
}

// replay writes the recorded writes to w as the direct path did; marks is
// scratch.
func replay(w markedWriter, writes []recordedWrite, marks []lineMark) ([]lineMark, error) {
	for _, rec := range writes {
		if !rec.marked {
			if _, err := w.Write(rec.b); err != nil {
				return marks, err
			}
			continue
		}
		buf := w.markedBuffer()
		from := len(buf)
		marks = append(marks[:0], rec.marks...)
		for i := range marks {
			marks[i].end += from
		}
		if err := w.writeMarked(append(buf, rec.b...), from, marks); err != nil {
			return marks, err
		}
	}
	return marks, nil
}

// BenchmarkSegmentMerge is what the aggregate endpoint adds to the relay
// of two exporters in text, apart from the exporter label: node_exporter's
// payload, relayed once and recorded with its marks, is cut into families
// for each exporter on a goroutine of its own, as the endpoint does, and
// merged. Every family name collides, as on the relaycompare and
// BenchmarkAggregate cases of two exporters with one payload.
func BenchmarkSegmentMerge(b *testing.B) {
	node, err := os.ReadFile("testdata/node_exporter_e2e.txt")
	if err != nil {
		b.Fatal(err)
	}
	rec := &markRecorder{}
	p := newPipeline("e", "exporter", nil, defaultLimits)
	if err := p.relay(bytes.NewReader(node), FormatText, "text/plain", FormatText, model.NoEscaping, rec); err != nil {
		b.Fatal(err)
	}
	r := &Relay{maxNames: maxWrittenNames}
	var n int64
	for _, w := range rec.writes {
		n += int64(len(w.b))
	}
	b.SetBytes(2 * n)
	b.ReportAllocs()
	marks := [2][]lineMark{}
	cpu := processCPU(b)
	for b.Loop() {
		sources := make([]*source, 2)
		errs := make(chan error, 2)
		for i := range sources {
			s := newSource(r, &exporter{cfg: ExporterConfig{Name: fmt.Sprint("e", i)}})
			sources[i] = s
			go func() {
				defer close(s.segs.ch)
				sg := newSegmenter(func(b *segmentBatch) error { s.segs.ch <- b; return nil })
				sg.recycle = s.segs.reuse
				var err error
				marks[i], err = replay(sg, rec.writes, marks[i])
				if err == nil {
					err = sg.close()
				}
				errs <- err
			}()
		}
		if err := r.mergeSegments(sources, io.Discard, false); err != nil {
			b.Fatal(err)
		}
		for _, s := range sources {
			if err := <-errs; err != nil {
				b.Fatal(err)
			}
			s.segs.release()
		}
	}
	reportCPU(b, cpu)
}

// BenchmarkAggregateOverhead is what cutting two exporters' output into
// families and merging them adds to relaying them, without HTTP: two
// pipelines relay node_exporter's payload in parallel, as the aggregate
// endpoint's exporters do, with the exporter label, into io.Discard
// (relay_only) or into segmenters whose batches one merge takes
// (segmented_and_merged). The difference of the two is the aggregate's
// own work, including the hand-over between goroutines.
func BenchmarkAggregateOverhead(b *testing.B) {
	node, err := os.ReadFile("testdata/node_exporter_e2e.txt")
	if err != nil {
		b.Fatal(err)
	}
	ps := []*pipeline{newPipeline("a", "exporter", nil, defaultLimits), newPipeline("b", "exporter", nil, defaultLimits)}
	relay := func(p *pipeline, w io.Writer) error {
		return p.relay(bytes.NewReader(node), FormatText, "text/plain", FormatText, model.NoEscaping, w)
	}
	benchAggregateOverhead(b, "", ps, relay, false)
}

// benchRelayOnly is the baseline of the aggregate's overhead benchmarks:
// the pipelines relay in parallel, as the aggregate's exporters do, into
// io.Discard (prefix/relay_only).
func benchRelayOnly(b *testing.B, prefix string, ps []*pipeline, relay func(*pipeline, io.Writer) error) {
	b.Run(prefix+"relay_only", func(b *testing.B) {
		cpu := processCPU(b)
		for b.Loop() {
			var wg sync.WaitGroup
			for _, p := range ps {
				wg.Go(func() {
					if err := relay(p, io.Discard); err != nil {
						b.Error(err)
					}
				})
			}
			wg.Wait()
		}
		reportCPU(b, cpu)
	})
}

// benchAggregateOverhead runs ps in parallel, each relaying with relay,
// into io.Discard (prefix/relay_only) and into segmenters whose batches one
// merge takes (prefix/segmented_and_merged): the difference is what the
// aggregate endpoint adds to relaying its exporters.
func benchAggregateOverhead(b *testing.B, prefix string, ps []*pipeline, relay func(*pipeline, io.Writer) error, om bool) {
	benchRelayOnly(b, prefix, ps, relay)
	benchCutAndMerged(b, prefix+"segmented_and_merged", ps, relay,
		func(s *source) *feed[segment] { return s.segs },
		func(f *feed[segment]) cutter {
			sg := newSegmenter(func(b *segmentBatch) error { f.ch <- b; return nil })
			sg.recycle = f.reuse
			return sg
		},
		func(r *Relay, sources []*source) error { return r.mergeSegments(sources, io.Discard, om) })
}

// cutter is what the aggregate endpoint has a relay write into: a
// segmenter or a framer.
type cutter interface {
	io.Writer
	close() error
}

// benchCutAndMerged runs ps in parallel, each relaying with relay into the
// cutter newCutter makes on its source's feed (feedOf), and merges what
// they cut, as the aggregate endpoint does.
func benchCutAndMerged[P any](b *testing.B, name string, ps []*pipeline, relay func(*pipeline, io.Writer) error,
	feedOf func(*source) *feed[P], newCutter func(*feed[P]) cutter, merge func(*Relay, []*source) error,
) {
	r := &Relay{maxNames: maxWrittenNames}
	b.Run(name, func(b *testing.B) {
		cpu := processCPU(b)
		for b.Loop() {
			sources := make([]*source, len(ps))
			var wg sync.WaitGroup
			for i, p := range ps {
				s := newSource(r, &exporter{cfg: ExporterConfig{Name: fmt.Sprint("e", i)}})
				sources[i] = s
				f := feedOf(s)
				wg.Go(func() {
					defer close(f.ch)
					c := newCutter(f)
					err := relay(p, c)
					if err == nil {
						err = c.close()
					}
					if err != nil {
						b.Error(err)
					}
				})
			}
			if err := merge(r, sources); err != nil {
				b.Fatal(err)
			}
			wg.Wait()
			for _, s := range sources {
				feedOf(s).release()
			}
		}
		reportCPU(b, cpu)
	})
}

// TestMarkType_NamesTheTypeMarked: a # TYPE line's mark gives back the
// type it was made of, for every type the formats define, and tells the
// segmenter to read any other.
func TestMarkType_NamesTheTypeMarked(t *testing.T) {
	for _, typ := range []string{"counter", "gauge", "histogram", "summary", "untyped", "unknown", "gaugehistogram", "info", "stateset"} {
		m := markType(typ)
		if m == 0 || m >= markTypeRead {
			t.Errorf("markType(%q) = %d", typ, m)
		}
		if got := markTypeName(m); got != typ {
			t.Errorf("markTypeName(markType(%q)) = %q", typ, got)
		}
	}
	if m := markType("weird"); m != markTypeRead {
		t.Errorf("markType of an unknown type = %d, want markTypeRead", m)
	}
}
