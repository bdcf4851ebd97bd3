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

package e2e

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// hugeExposition is the size of the exposition the agent relays in
// TestAgent_RelaysHugeExpositionInBoundedMemory.
const hugeExposition = 100 << 20

// hugeBlock is about 1 MiB of text exposition: families of 100 counters with
// the label shapes of a busy service. The upstream repeats it.
func hugeBlock() []byte {
	var b bytes.Buffer
	for f := 0; b.Len() < 1<<20; f++ {
		fmt.Fprintf(&b, "# HELP app_requests_%d_total Requests served.\n# TYPE app_requests_%d_total counter\n", f, f)
		for s := range 100 {
			fmt.Fprintf(&b, "app_requests_%d_total{instance=\"host-%d\",method=\"GET\",path=\"/api/v1/items/%d\",code=\"200\"} %d\n", f, s%7, s, f*s)
		}
	}
	return b.Bytes()
}

// TestAgent_RelaysHugeExpositionInBoundedMemory has the real agent relay a
// 100 MiB exposition to text and to protobuf, and checks its peak resident
// memory (VmHWM) stays under the 64 MiB the relay is designed for: memory is
// bounded by one metric family, not by the payload.
func TestAgent_RelaysHugeExpositionInBoundedMemory(t *testing.T) {
	t.Parallel()
	block := hugeBlock()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		for sent := 0; sent < hugeExposition; sent += len(block) {
			if _, err := w.Write(block); err != nil {
				return
			}
		}
	}))
	t.Cleanup(upstream.Close)

	h := newAgentHarness(t)
	a := startAgent(t, h.s, agentOptions{
		Hostname:    "e2e-huge",
		Token:       h.enrollToken(t),
		RelayConfig: "exporters:\n  - name: huge\n    url: " + upstream.URL + "/metrics\n    timeout: 60s\n",
	})
	a.waitState(t, h.scraper, "registered")
	t.Logf("agent resident memory registered, before relaying: %s", rssParts(t, a.proc.cmd.Process.Pid))
	cpuBefore := processCPU(t, a.proc.cmd.Process.Pid)

	for _, accept := range []string{
		"text/plain;version=0.0.4",
		"application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited",
	} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, a.URL+"/exporters/huge/metrics", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", accept)
		req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", "60")
		client := &http.Client{Transport: h.scraper.Transport, Timeout: 2 * time.Minute}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("read relayed body (%s): %v", accept, err)
		}
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("relay answered %s for %s", resp.Status, accept)
		}
		if n < hugeExposition/4 {
			t.Fatalf("relayed only %d bytes of a %d byte exposition as %s", n, hugeExposition, accept)
		}
	}

	peak := peakRSS(t, a.proc.cmd.Process.Pid)
	// The CPU the relaying took, to weigh a smaller peak (a lower GOGC, a
	// memory limit) against the collections it costs.
	t.Logf("agent CPU relaying 2 x %d MiB: %.2f s", hugeExposition>>20, (processCPU(t, a.proc.cmd.Process.Pid) - cpuBefore).Seconds())
	t.Logf("agent peak RSS (VmHWM) after relaying 2 x %d MiB: %.1f MiB", hugeExposition>>20, float64(peak)/(1<<20))
	// What the resident memory is made of: the binary's pages (RssFile)
	// stay resident once touched and count towards the peak as much as
	// the heap (RssAnon) does.
	t.Logf("agent resident memory now: %s", rssParts(t, a.proc.cmd.Process.Pid))
	if peak >= 64<<20 {
		t.Errorf("agent peak RSS %.1f MiB relaying %d MiB: want < 64 MiB", float64(peak)/(1<<20), hugeExposition>>20)
	}
}

// processCPU reads a process's CPU time (user and system) from /proc, in
// clock ticks of 10 ms, the USER_HZ of every Linux architecture Go runs on.
func processCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// The command name, in parentheses, may hold spaces: count fields after it.
	_, rest, ok := strings.Cut(string(data), ") ")
	fields := strings.Fields(rest)
	if !ok || len(fields) < 13 {
		t.Fatalf("unexpected /proc/%d/stat: %q", pid, data)
	}
	var ticks int64
	for _, f := range fields[11:13] { // utime and stime, fields 14 and 15
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			t.Fatalf("/proc/%d/stat: %v", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * 10 * time.Millisecond
}

// peakRSS reads a process's peak resident set size from /proc.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatalf("VmHWM %q: %v", v, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// rssParts reads the parts of a process's resident set from /proc.
func rssParts(t *testing.T, pid int) string {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for line := range strings.SplitSeq(string(data), "\n") {
		for _, key := range []string{"VmRSS:", "RssAnon:", "RssFile:", "RssShmem:"} {
			if v, ok := strings.CutPrefix(line, key); ok {
				parts = append(parts, key+" "+strings.TrimSpace(v))
			}
		}
	}
	return strings.Join(parts, ", ")
}
