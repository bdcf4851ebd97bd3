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

package bench

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestHistogram_BucketsCoverValues(t *testing.T) {
	for _, v := range []time.Duration{0, 1, 63, 127, 128, 129, 255, 256, 1000, 12345, time.Millisecond, 7 * time.Millisecond, time.Second, time.Hour} {
		b := bucketOf(v)
		lo, hi := bucketRange(b)
		if v < lo || v > hi {
			t.Errorf("value %d in bucket %d [%d, %d]", v, b, lo, hi)
		}
		if v >= 128 && float64(hi-lo) > float64(v)/60 {
			t.Errorf("bucket %d [%d, %d] is wider than 1/60 of %d", b, lo, hi, v)
		}
	}
}

func TestHistogram_Quantiles(t *testing.T) {
	var a, b histogram
	// 1..10000 µs, split over two histograms that are merged.
	for i := 1; i <= 10000; i++ {
		h := &a
		if i%2 == 0 {
			h = &b
		}
		h.record(time.Duration(i) * time.Microsecond)
	}
	a.merge(&b)
	tests := []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 5000 * time.Microsecond},
		{0.9, 9000 * time.Microsecond},
		{0.99, 9900 * time.Microsecond},
		{1, 10000 * time.Microsecond},
		{0, time.Microsecond},
	}
	for _, tt := range tests {
		got := a.quantile(tt.q)
		if d := float64(got-tt.want) / float64(tt.want); d > 0.02 || d < -0.02 {
			t.Errorf("quantile(%v) = %v, want %v within 2%%", tt.q, got, tt.want)
		}
	}
	if a.n != 10000 || a.min != time.Microsecond || a.max != 10*time.Millisecond {
		t.Errorf("n, min, max = %d, %v, %v", a.n, a.min, a.max)
	}
	if m := a.mean(); m < 5000*time.Microsecond || m > 5001*time.Microsecond {
		t.Errorf("mean = %v, want 5000.5µs", m)
	}
	var empty histogram
	if empty.quantile(0.5) != 0 || empty.mean() != 0 {
		t.Error("empty histogram reports a value")
	}
}

func TestDurations_Median(t *testing.T) {
	tests := []struct {
		in   durations
		want time.Duration
	}{
		{nil, 0},
		{durations{3}, 3},
		{durations{5, 1, 3}, 3},
		{durations{4, 1, 3, 2}, 2},
	}
	for _, tt := range tests {
		if got := tt.in.median(); got != tt.want {
			t.Errorf("median(%v) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestParseServerURL_LoopbackOnly(t *testing.T) {
	tests := []struct {
		url, addr string
		ok        bool
	}{
		{"https://127.0.0.1:9955", "127.0.0.1:9955", true},
		{"https://localhost:9955/", "localhost:9955", true},
		{"https://[::1]:9955", "[::1]:9955", true},
		{"https://127.0.0.1", "127.0.0.1:443", true},
		{"http://127.0.0.1:9955", "", false},
		{"https://192.0.2.1:9955", "", false},
		{"https://example.com:9955", "", false},
		{"://", "", false},
	}
	for _, tt := range tests {
		addr, _, err := parseServerURL(tt.url)
		if (err == nil) != tt.ok || addr != tt.addr {
			t.Errorf("parseServerURL(%q) = %q, %v; want %q, ok=%v", tt.url, addr, err, tt.addr, tt.ok)
		}
	}
}

func TestParseProcStatCPU(t *testing.T) {
	tests := []struct {
		name string
		stat string
		want time.Duration
		ok   bool
	}{
		{"plain", "42 (baremetal_sd) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 100 0 0", 3 * time.Second, true},
		{"spaces in name", "42 (a b) c) R 1 42 42 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 1 0 0", 30 * time.Millisecond, true},
		{"no name", "42 S 1", 0, false},
		{"short", "42 (x) S 1 2 3", 0, false},
		{"not numbers", "42 (x) S 1 42 42 0 -1 0 0 0 0 0 u s 0 0", 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcStatCPU(tt.stat)
			if (err == nil) != tt.ok || got != tt.want {
				t.Errorf("got %v, %v; want %v, ok=%v", got, err, tt.want, tt.ok)
			}
		})
	}
}

func TestScrapeValues_PicksUnlabelledSamples(t *testing.T) {
	body := strings.Join([]string{
		"# HELP process_resident_memory_bytes Resident memory size in bytes.",
		"# TYPE process_resident_memory_bytes gauge",
		"process_resident_memory_bytes 1.2345e+07",
		`go_memstats_heap_inuse_bytes{x="y"} 5`,
		"go_memstats_sys_bytes 100 1700000000000",
		"other 7",
	}, "\n")
	got := scrapeValues([]byte(body), serverMetricNames)
	want := map[string]float64{"process_resident_memory_bytes": 12345000, "go_memstats_sys_bytes": 100}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
}

func FuzzScrapeValues(f *testing.F) {
	f.Add([]byte("process_resident_memory_bytes 1e6\n"))
	f.Add([]byte("go_memstats_sys_bytes NaN 12\n\n# x\n"))
	f.Fuzz(func(_ *testing.T, body []byte) {
		_ = scrapeValues(body, serverMetricNames)
	})
}

func TestTable_Aligns(t *testing.T) {
	tb := &table{title: "bench x"}
	tb.add("a", "%d", 1)
	tb.add("longer name", "%s", "v")
	var buf bytes.Buffer
	if err := tb.write(&buf); err != nil {
		t.Fatal(err)
	}
	want := "bench x\n  a            1\n  longer name  v\n"
	if buf.String() != want {
		t.Errorf("table\n%q\nwant\n%q", buf.String(), want)
	}
}
