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
	"testing"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/relabel"
)

// cacheRules need the labels of every series, so every series goes through
// the cache: a drop on two labels, a rename, a label copy and a constant.
// renameSome moves some metrics of a family into a family of another name
// (the stream path's misses, written through client_model families), and
// gives others a label that needs escaping.
const renameSome = `
- source_labels: [fstype]
  regex: tmpfs
  target_label: __name__
  replacement: renamed_total
- source_labels: [path]
  regex: '/p/1.*'
  target_label: "utf8.label"
  replacement: x`

const cacheRules = `
- source_labels: [__name__, code]
  regex: 'http_requests_total;500|node_(filesystem|cpu)_.+;.*'
  action: drop
- source_labels: [__name__]
  regex: '(.*)_sum'
  target_label: __name__
  replacement: '${1}_total_sum'
- source_labels: [sensor]
  target_label: probe
- target_label: env
  replacement: prod`

// compareCached relays each input in turn through one pipeline with a
// series cache and through a fresh one without, and fails unless both write
// the same bytes (and fail alike). Every input passes twice, so that the
// second pass is served from the cache.
func compareCached(t testing.TB, rules []*relabel.Config, in Format, ct string, inputs ...[]byte) *seriesCache {
	t.Helper()
	lim := limits{maxLine: 4096, maxFrame: 1 << 20, maxMetric: 1 << 20}
	cache := newSeriesCache(4 << 20)
	cached := newPipeline("e", "", rules, lim)
	// Protobuf input is relayed into every format, the formats taking
	// turns with one cache, as scrapers of different formats would.
	// Text is relayed as it came and written as protobuf, which the
	// cache serves from the label fields it remembers.
	outs := []Format{in, FormatProtobuf}
	if in == FormatProtobuf {
		outs = []Format{FormatProtobuf, FormatText, FormatOpenMetrics}
	}
	for pass := range 2 {
		for i, data := range inputs {
			for _, out := range outs {
				for _, esc := range []model.EscapingScheme{model.NoEscaping, model.UnderscoreEscaping} {
					var want, got bytes.Buffer
					errWant := newPipeline("e", "", rules, lim).relay(bytes.NewReader(data), in, ct, out, esc, &want)
					cached.cache = cache
					errGot := cached.relay(bytes.NewReader(data), in, ct, out, esc, &got)
					cached.cache = nil
					cache.endScrape()
					if (errWant == nil) != (errGot == nil) {
						t.Fatalf("pass %d input %d %v %v: error %v uncached, %v cached\ninput %q", pass, i, out, esc, errWant, errGot, data)
					}
					if errWant == nil && !bytes.Equal(want.Bytes(), got.Bytes()) {
						t.Fatalf("pass %d input %d %v %v: cached output differs\ninput %q\nuncached %q\ncached   %q", pass, i, out, esc, data, want.Bytes(), got.Bytes())
					}
				}
			}
		}
	}
	return cache
}

func TestSeriesCache_SameOutputAsUncached(t *testing.T) {
	rules := parseRules(t, cacheRules)
	tests := []struct {
		name   string
		in     Format
		ct     string
		inputs [][]byte
	}{
		{"text", FormatText, "text/plain; version=0.0.4", [][]byte{[]byte(richText), []byte(relabelText), []byte(escapingText)}},
		{"node_exporter", FormatText, "text/plain; version=0.0.4", [][]byte{nodeExporterFixture(t)}},
		{"openmetrics", FormatOpenMetrics, ContentTypeOpenMetrics, [][]byte{[]byte(richOM), []byte(relabelOM)}},
		{"protobuf", FormatProtobuf, ContentTypeProtobuf, [][]byte{toProtoB(t, nodeExporterFixture(t)), protobufFixtureBytes(t)}},
		// UTF-8 names, which a scraper without them gets escaped.
		{"protobuf_escaping", FormatProtobuf, ContentTypeProtobuf, [][]byte{toProtoB(t, []byte(escapingText))}},
		// One family of 8,000 metrics, relayed in parts, whose bounds
		// hang on every metric's decoded size, which a warm scrape takes
		// from the cache.
		{"protobuf_parts", FormatProtobuf, ContentTypeProtobuf, [][]byte{toProtoB(t, syntheticText(1, 8000))}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := compareCached(t, rules, tt.in, tt.ct, tt.inputs...)
			if cache.len() == 0 {
				t.Fatal("nothing was cached: the test compares nothing")
			}
			dropped, wired, wiredDrops, texts, textDrops := 0, 0, 0, 0, 0
			for _, e := range cache.slots {
				if e.text == "" {
					continue
				}
				if e.dropped {
					dropped++
				}
				switch e.text[0] & 0xc0 {
				case 0x40: // text written as protobuf (lookupWire)
					if e.dropped {
						wiredDrops++
					} else {
						wired++
					}
				case 0xc0: // protobuf written as text (lookupProtobuf)
					if e.dropped {
						textDrops++
					} else {
						texts++
					}
				}
			}
			if (tt.name == "text" || tt.name == "node_exporter" || tt.name == "protobuf") && dropped == 0 {
				t.Error("no drop was cached")
			}
			if tt.in == FormatText && (wired == 0 || wiredDrops == 0) {
				t.Errorf("text written as protobuf: %d series and %d drops cached, want some of both", wired, wiredDrops)
			}
			if tt.name == "protobuf" && (texts == 0 || textDrops == 0) {
				t.Errorf("protobuf written as text: %d series and %d drops cached, want some of both", texts, textDrops)
			}
		})
	}
}

// TestSeriesCache_Bounded: the cache never holds more than its bound, and
// entries unseen for seriesCacheMaxAge scrapes go away.
func TestSeriesCache_Bounded(t *testing.T) {
	rules := parseRules(t, cacheRules)
	const bound = 64 << 10
	cache := newSeriesCache(bound)
	p := newPipeline("e", "", rules, defaultLimits)
	relayWith := func(text []byte) {
		t.Helper()
		p.cache = cache
		var out bytes.Buffer
		if err := p.relay(bytes.NewReader(text), FormatText, "text/plain", FormatText, model.NoEscaping, &out); err != nil {
			t.Fatal(err)
		}
		p.cache = nil
		cache.endScrape()
	}
	relayWith(syntheticText(100, 100)) // 10,000 series, far more than the bound
	if cache.bytes > bound || cache.len() == 0 {
		t.Fatalf("cache holds %d bytes in %d entries, bound %d", cache.bytes, cache.len(), bound)
	}
	other := []byte("other_metric{a=\"1\"} 1\n")
	for range seriesCacheMaxAge + seriesCacheMaxAge/2 + 1 {
		relayWith(other)
	}
	if cache.len() != 1 {
		t.Fatalf("%d entries after %d scrapes of one series, want 1", cache.len(), seriesCacheMaxAge*2)
	}
	if want := len(other) - len(" 1\n") + 1 + len("other_metric{a=\"1\",env=\"prod\"}") + seriesEntryOverhead; cache.bytes != want {
		t.Errorf("cache accounts %d bytes, want %d", cache.bytes, want)
	}
}

// TestRelay_SeriesCacheAcrossScrapes: an exporter with rules keeps its
// cache between scrapes and relays the same answer cold and warm; a
// negative series_cache_bytes turns the cache off.
func TestRelay_SeriesCacheAcrossScrapes(t *testing.T) {
	up := upstreamServer(t, "text/plain; version=0.0.4", nodeExporterFixture(t))
	rules := "    metric_relabel_configs:\n      - source_labels: [__name__, fstype]\n        regex: node_filesystem_.+;tmpfs\n        action: drop\n"
	for _, tt := range []struct {
		extra  string
		cached bool
	}{{"", true}, {"series_cache_bytes: -1\n", false}} {
		t.Run(fmt.Sprint("cached=", tt.cached), func(t *testing.T) {
			r, _ := newRelay(t, tt.extra+"exporters:\n  - name: e\n    url: "+up.URL+"\n"+rules)
			cold := scrape(t, r, "/exporters/e/metrics", acceptText)
			warm := scrape(t, r, "/exporters/e/metrics", acceptText)
			if cold.Code != 200 || warm.Code != 200 {
				t.Fatalf("status %d, %d", cold.Code, warm.Code)
			}
			if !bytes.Equal(cold.Body.Bytes(), warm.Body.Bytes()) {
				t.Fatal("warm scrape differs from the cold one")
			}
			if bytes.Contains(cold.Body.Bytes(), []byte(`fstype="tmpfs"`)) {
				t.Fatal("drop rule not applied")
			}
			c := r.exporters["e"].cache
			if tt.cached != (c != nil && c.len() > 0) {
				t.Fatalf("cache %v, want cached=%v", c, tt.cached)
			}
			if !tt.cached {
				return
			}
			// A warm scrape writes what the cache holds, not what relabeling
			// would make again: poison every kept series and look for it.
			for i := range c.slots {
				if e := &c.slots[i]; !e.dropped && e.text != "" {
					e.text = e.text[:e.keyLen] + "poisoned_series"
				}
			}
			if hit := scrape(t, r, "/exporters/e/metrics", acceptText); !bytes.Contains(hit.Body.Bytes(), []byte("poisoned_series")) {
				t.Fatal("a warm scrape did not use the series cache")
			}
		})
	}
}

// FuzzSeriesCache: for any input, relaying through a warm series cache
// writes exactly what relaying without one writes.
func FuzzSeriesCache(f *testing.F) {
	f.Add([]byte(richText), false)
	f.Add([]byte(relabelText), false)
	f.Add([]byte(escapingText), false)
	f.Add([]byte(richOM), true)
	f.Add([]byte("a{code=\"500\"} 1\na{code=\"500\"} 2\n{\"a.b\",code=\"1\"} 3\n"), false)
	rules := [][]*relabel.Config{parseRules(f, cacheRules)}
	for _, r := range fuzzRules {
		rules = append(rules, parseRules(f, r))
	}
	f.Fuzz(func(t *testing.T, data []byte, om bool) {
		in, ct := FormatText, "text/plain; version=0.0.4"
		if om {
			in, ct = FormatOpenMetrics, ContentTypeOpenMetrics
		}
		half := data[:len(data)/2]
		for _, rs := range rules {
			compareCached(t, rs, in, ct, data, half)
		}
	})
}

// FuzzSeriesCacheProtobuf: for any protobuf input, relaying through a warm
// series cache writes exactly what relaying without one writes.
func FuzzSeriesCacheProtobuf(f *testing.F) {
	f.Add(protobufFixtureBytes(f))
	f.Add(toProtoB(f, []byte(relabelText)))
	f.Add(toProtoB(f, []byte(escapingText)))
	rules := [][]*relabel.Config{parseRules(f, cacheRules)}
	for _, r := range fuzzRules {
		rules = append(rules, parseRules(f, r))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		half := data[:len(data)/2]
		for _, rs := range rules {
			compareCached(t, rs, FormatProtobuf, ContentTypeProtobuf, data, half)
		}
	})
}
