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
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"github.com/prometheus/prometheus/model/textparse"
	"google.golang.org/protobuf/encoding/protodelim"
)

// fuzzRules cut through histograms and summaries, rename, add labels and
// drop by name: the fast path takes the first set, the second needs labels.
var fuzzRules = []string{`
- target_label: env
  replacement: prod
- source_labels: [__name__]
  regex: .*_count
  action: drop`, `
- source_labels: [le]
  regex: '\+Inf'
  action: drop
- source_labels: [__name__]
  regex: '(.*)_sum'
  target_label: __name__
  replacement: '${1}_total_sum'
- regex: 'a'
  action: labeldrop`}

// fuzzRelay runs the pipeline over arbitrary input for every output
// format, without and with rules, as an exporter's endpoint and with the
// aggregate endpoint's exporter label. It must never panic, and what it
// relays without an error must parse; the aggregate endpoint's segmenter
// and framer must cut its output alike whether the writers mark it or
// they read it. Limits are small so that no input
// can make it allocate much.
func fuzzRelay(t *testing.T, data []byte, in Format, ct string) {
	lim := limits{maxLine: 4096, maxFrame: 1 << 20, maxMetric: 1 << 20}
	rules := [][]*relabel.Config{nil}
	for _, r := range fuzzRules {
		rules = append(rules, parseRules(t, r))
	}
	for _, out := range []Format{FormatText, FormatOpenMetrics, FormatProtobuf} {
		for _, rs := range rules {
			for _, label := range []string{"", "exporter"} {
				for _, esc := range []model.EscapingScheme{model.NoEscaping, model.UnderscoreEscaping} {
					p := newPipeline("fuzz", label, rs, lim)
					body := &capReader{r: bytes.NewReader(data), max: 1 << 20}
					var buf bytes.Buffer
					err := p.relay(body, in, ct, out, esc, &buf)
					if in == FormatProtobuf || out == FormatProtobuf {
						compareStream(t, data, in, ct, out, rs, label, esc, lim, buf.Bytes(), err)
					}
					if err != nil {
						continue
					}
					if out == in && rs == nil {
						compareSegments(t, data, in, label, esc, lim)
					}
					if out != in && out != FormatProtobuf {
						compareConversionSegments(t, data, in, out, rs, label, esc, lim)
					}
					if out == FormatProtobuf {
						compareFrames(t, data, in, rs, label, esc, lim)
					}
					outCT := out.ContentType()
					if err := parses(buf.Bytes(), outCT); err != nil {
						t.Fatalf("%v to %v (rules %d, label %q, %v): output does not parse: %v\ninput %q\noutput %q", in, out, len(rs), label, esc, err, data, buf.Bytes())
					}
				}
			}
		}
	}
}

// compareSegments checks that the aggregate endpoint's segmenter cuts the
// direct path's output alike whether it is told the lines or reads them,
// unless a line has a raw newline in a label value (countingSegmenter).
func compareSegments(t *testing.T, data []byte, in Format, label string, esc model.EscapingScheme, lim limits) {
	t.Helper()
	for _, part := range []int{segmentPartBytes, 64} {
		read, _, rerr := segmentCuts(newPipeline("fuzz", label, nil, lim), data, in, esc, part, false)
		marked, split, merr := segmentCuts(newPipeline("fuzz", label, nil, lim), data, in, esc, part, true)
		if (rerr == nil) != (merr == nil) {
			t.Fatalf("%v, part %d: read: %v, marked: %v", in, part, rerr, merr)
		}
		if rerr == nil && !split {
			sameCuts(t, marked, read)
		}
	}
}

// parses reports whether Prometheus' parser reads body whole.
func parses(body []byte, ct string) error {
	p, err := textparse.New(body, ct, nil, textparse.ParserOptions{})
	if err != nil {
		return err
	}
	for {
		if _, err := p.Next(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func FuzzRelayText(f *testing.F) {
	f.Add([]byte(richText))
	f.Add([]byte(relabelText))
	f.Add([]byte(escapingText))
	f.Add([]byte("# TYPE a counter\na 1\n# TYPE a gauge\na 2\n"))
	f.Add([]byte("{\"utf8.name\",a=\"b\"} 1\n"))
	f.Add([]byte("a{b=\"\\x\"} 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRelay(t, data, FormatText, "text/plain; version=0.0.4")
	})
}

func FuzzRelayOpenMetrics(f *testing.F) {
	f.Add([]byte(richOM))
	f.Add([]byte(relabelOM))
	f.Add([]byte("# TYPE a histogram\na_bucket{le=\"x\"} 1\n# EOF\n"))
	f.Add([]byte("a_total 1 # {} 1\n# EOF\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRelay(t, data, FormatOpenMetrics, ContentTypeOpenMetrics)
	})
}

func FuzzRelayProtobuf(f *testing.F) {
	var buf bytes.Buffer
	_, _ = protodelim.MarshalTo(&buf, nativeHistogramFamily())
	f.Add(buf.Bytes())
	for _, mf := range protobufFixture() {
		buf.Reset()
		_, _ = protodelim.MarshalTo(&buf, mf)
		f.Add(append([]byte(nil), buf.Bytes()...))
	}
	f.Add(binary.AppendUvarint(nil, 64<<30))
	f.Add([]byte{0x05, 0x0a, 0x01, 'a', 0x18, 0x09})
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRelay(t, data, FormatProtobuf, ContentTypeProtobuf)
	})
}

// FuzzScanNames checks scanNames against Prometheus' text parser: a series
// with a label named like the exporter label must be reported named, and
// one reported named without a quoted name must have that label.
func FuzzScanNames(f *testing.F) {
	for _, s := range []string{
		`up`, `up{exporter="a"}`, `up{a="exporter"}`, `up{a="\"",exporter="b"}`, `up{ a = "x" , exporter = "y" }`,
		`up{exporters="a",b="exporter"}`, `{"up",exporter="a"}`, `up{"exporter"="a"}`, `up{a="x\\",exporter="y"}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, series string) {
		body := []byte(series + " 1\n")
		p, err := textparse.New(body, "text/plain", nil, textparse.ParserOptions{})
		if err != nil {
			return
		}
		for {
			entry, err := p.Next()
			if err != nil {
				return
			}
			if entry != textparse.EntrySeries {
				continue
			}
			raw, _, _ := p.Series()
			var lset labels.Labels
			p.Labels(&lset)
			quoted, named := scanNames(raw, "exporter")
			if has := lset.Has("exporter"); has && !named || named && !quoted && !has {
				t.Fatalf("scanNames(%q) = %v, %v; labels %v", raw, quoted, named, lset)
			}
		}
	})
}
