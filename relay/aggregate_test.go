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
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
)

// acceptProm3 is Prometheus 3's default Accept header: text is answered
// as text 1.0.0, which escapes no names.
const acceptProm3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"

// discardResponse is a ResponseWriter that keeps nothing, so that a
// benchmark measures the relay rather than a recorder.
type discardResponse struct{ h http.Header }

func (d *discardResponse) Header() http.Header         { return d.h }
func (d *discardResponse) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardResponse) WriteHeader(int)             {}

// BenchmarkAggregate compares, in one run, the aggregate endpoint over two
// exporters with two scrapes of one exporter's own endpoint, for the
// scrapers' formats of relaycompare, without compression: the goal is that
// the first costs at most 1.2x the second. The upstream serves text, or
// protobuf when asked for it first, as node_exporter does. The aggregate
// endpoint over one exporter, with and without the exporter label, shows
// what the merge costs apart from the label (compare it with one
// exporter's scrape, half of two_exporter_scrapes).
func BenchmarkAggregate(b *testing.B) {
	for _, p := range []struct {
		name string
		text []byte
	}{{"30k", syntheticText(300, 100)}, {"node", nodeExporterFixture(b)}} {
		b.Run(p.name, func(b *testing.B) { benchmarkAggregate(b, p.text) })
	}
}

func benchmarkAggregate(b *testing.B, text []byte) {
	proto := toProtoB(b, text)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.Header.Get("Accept"), "application/vnd.google.protobuf") {
			w.Header().Set("Content-Type", ContentTypeProtobuf)
			_, _ = w.Write(proto)
			return
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = w.Write(text)
	}))
	defer up.Close()
	two := "exporters:\n  - name: a\n    url: " + up.URL + "/metrics\n  - name: b\n    url: " + up.URL + "/metrics\n"
	r, _ := newRelay(b, two)
	// The aggregate of one exporter, without the exporter label and with
	// it, tells the merge's share from the label's.
	one, _ := newRelay(b, "exporter_label: ''\n"+two[:strings.Index(two, "  - name: b")])
	oneLabeled, _ := newRelay(b, two[:strings.Index(two, "  - name: b")])
	for _, a := range []struct{ name, accept string }{{"text", acceptText}, {"prom3", acceptProm3}, {"openmetrics", acceptOM}, {"protobuf", acceptProto}} {
		get := func(r http.Handler, path string) {
			req := httptest.NewRequest("GET", path, nil)
			req.Header.Set("Accept", a.accept)
			r.ServeHTTP(&discardResponse{h: http.Header{}}, req)
		}
		for _, c := range []struct {
			name  string
			r     http.Handler
			paths []string
		}{
			{"two_exporter_scrapes", r, []string{ExporterPath("a"), ExporterPath("b")}},
			{"aggregate", r, []string{aggregatePath}},
			{"aggregate_of_one_unlabeled", one, []string{aggregatePath}},
			{"aggregate_of_one", oneLabeled, []string{aggregatePath}},
		} {
			b.Run(a.name+"/"+c.name, func(b *testing.B) {
				cpu := processCPU(b)
				for b.Loop() {
					for _, path := range c.paths {
						get(c.r, path)
					}
				}
				reportCPU(b, cpu)
			})
		}
	}
}

// processCPU is the process' user and system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the process CPU time per operation since start: the
// aggregate endpoint works on several goroutines at once, so its wall
// time per scrape says little about its cost.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(processCPU(b)-start)/float64(b.N), "cpu-ns/op")
}

// TestFrame_MetricsSpanIsTheMetricFields: what a joined frame takes of a
// frame in one piece (its metric fields' span) is the frame's metric fields
// one by one, for messages with the fields in any order, metrics split by
// other fields or none at all.
func TestFrame_MetricsSpanIsTheMetricFields(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 12))
	for i := range 2000 {
		var msg []byte
		for range rng.IntN(8) {
			switch rng.IntN(5) {
			case 0:
				msg = protowire.AppendTag(msg, fieldFamilyName, protowire.BytesType)
				msg = protowire.AppendString(msg, "m")
			case 1:
				msg = protowire.AppendTag(msg, fieldFamilyHelp, protowire.BytesType)
				msg = protowire.AppendString(msg, strings.Repeat("h", rng.IntN(3)))
			case 2:
				msg = protowire.AppendTag(msg, fieldFamilyType, protowire.VarintType)
				msg = protowire.AppendVarint(msg, uint64(rng.IntN(5)))
			default:
				msg = protowire.AppendTag(msg, fieldFamilyMetric, protowire.BytesType)
				msg = protowire.AppendBytes(msg, bytes.Repeat([]byte{byte(i)}, rng.IntN(200)))
			}
		}
		buf := append([]byte("prefix"), protowire.AppendBytes(nil, msg)...)
		f := frame{start: 6, body: 6 + protowire.SizeVarint(uint64(len(msg))), end: len(buf)}
		if err := f.scan(buf[f.body:f.end]); err != nil {
			t.Fatal(err)
		}
		want := appendMetricFields([]byte("x"), buf[f.body:f.end])
		if got := f.appendMetrics([]byte("x"), buf); !bytes.Equal(got, want) {
			t.Fatalf("message %x: metrics %x, want %x", msg, got, want)
		}
		if got, want := f.metricsSize(buf), metricFieldsSize(buf[f.body:f.end]); got != want {
			t.Fatalf("message %x: size %d, want %d", msg, got, want)
		}
	}
}

// TestSegmenter_WritesCutAnywhere: the segmenter cuts the same families
// out of an output whether it comes in one write or in writes cut
// anywhere, within lines too, and keeps every byte but # EOF.
func TestSegmenter_WritesCutAnywhere(t *testing.T) {
	node := nodeExporterFixture(t)
	bodies := map[string][]byte{
		"node":      node,
		"rich":      []byte(richText),
		"bare":      []byte("# TYPE z gauge\nz 1\nbare 1\n# HELP b B.\n# TYPE b gauge\nb{x=\"1\"} 2\nbare{again=\"1\"} 2\n# a comment\nb 3"),
		"eof in om": []byte("# TYPE a gauge\na 1\n# EOF\n"),
	}
	type cut struct {
		seg   segment
		bytes string
	}
	segments := func(out []byte, sizes func() int) ([]cut, string) {
		var got []cut
		var all strings.Builder
		sg := newSegmenter(func(b *segmentBatch) error {
			for _, sgm := range b.parts {
				c := cut{seg: sgm, bytes: string(b.buf[sgm.start:sgm.end])}
				c.seg.start, c.seg.metaEnd, c.seg.end = 0, sgm.metaEnd-sgm.start, 0
				got = append(got, c)
				all.WriteString(c.bytes)
			}
			return nil
		})
		sg.partBytes = 1 << 30
		sg.recycle = func() *segmentBatch { return &segmentBatch{buf: make([]byte, 0, 7)} }
		for len(out) > 0 {
			n := min(sizes(), len(out))
			if _, err := sg.Write(out[:n]); err != nil {
				t.Fatal(err)
			}
			out = out[n:]
		}
		if err := sg.close(); err != nil {
			t.Fatal(err)
		}
		return got, all.String()
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for name, body := range bodies {
		t.Run(name, func(t *testing.T) {
			whole, all := segments(body, func() int { return len(body) })
			if len(whole) == 0 {
				t.Fatal("no segments")
			}
			want := string(body)
			if i := strings.Index(want, "# EOF\n"); i >= 0 {
				want = want[:i] + want[i+len("# EOF\n"):]
			}
			if !strings.HasSuffix(want, "\n") {
				want += "\n"
			}
			if all != want {
				t.Fatalf("segments hold %q, want %q", all, want)
			}
			for _, max := range []int{1, 2, 7, 100, 4096} {
				got, _ := segments(body, func() int { return 1 + rng.IntN(max) })
				if len(got) != len(whole) {
					t.Fatalf("writes of up to %d bytes: %d segments, want %d", max, len(got), len(whole))
				}
				for i := range got {
					if got[i] != whole[i] {
						t.Fatalf("writes of up to %d bytes: segment %d is %+v, want %+v", max, i, got[i], whole[i])
					}
				}
			}
		})
	}
}

// TestNameSet_AsASetOfNames: a nameSet answers as a set of the names added
// (the first limit additions), whatever their order: ascending, as sorted exporters
// send them, or not, and after a reset. The names are added as the merge
// has them, in bytes that are filled again afterwards (partName): the set
// keeps none of them.
func TestNameSet_AsASetOfNames(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	names := []string{"", "a", "a_total", "b", "node_cpu", "node_cpu_seconds_total", "z"}
	set := newNameSet(maxWrittenNames)
	var scratch []byte
	for i := range 500 {
		limit := maxWrittenNames
		if i%5 == 0 {
			limit = rng.IntN(4)
		}
		set.reset(limit)
		want := map[string]bool{}
		added := 0
		sorted := i%2 == 0
		for j := range rng.IntN(12) {
			name := names[rng.IntN(len(names))]
			if sorted {
				name = names[min(j, len(names)-1)]
			}
			if rng.IntN(2) == 0 {
				if got := set.has(name); got != want[name] {
					t.Fatalf("case %d: has(%q) = %v, want %v (added %v)", i, name, got, want[name], want)
				}
				continue
			}
			// Past the limit, adding does nothing.
			if added < limit {
				want[name] = true
				added++
			}
			scratch = append(scratch[:0], name...)
			set.add(partName(scratch))
			clear(scratch)
		}
		for _, name := range names {
			if got := set.has(name); got != want[name] {
				t.Fatalf("case %d: has(%q) = %v, want %v (added %v)", i, name, got, want[name], want)
			}
		}
	}
}
