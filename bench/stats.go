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
	"bufio"
	"fmt"
	"io"
	"math/bits"
	"os"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// The latency histogram is log-linear, like HdrHistogram with two
// significant digits: values below 2^subBits ns get a bucket each, larger ones
// keep their subBits most significant bits. Every bucket is at most 1/64
// (1.6%) wide relative to its value and the whole histogram is a fixed 32 KiB,
// so a worker can record millions of requests without growing.
const (
	subBits     = 7
	subHalf     = 1 << (subBits - 1)
	histBuckets = 64 * subHalf
)

// histogram records durations. It is not safe for concurrent use: every
// worker keeps its own and they are merged at the end.
type histogram struct {
	counts [histBuckets]uint64
	n      uint64
	sum    time.Duration
	min    time.Duration
	max    time.Duration
}

func bucketOf(d time.Duration) int {
	v := uint64(max(d, 0))
	if v < 1<<subBits {
		return int(v)
	}
	e := bits.Len64(v) - subBits
	b := e*subHalf + int(v>>uint(e))
	return min(b, histBuckets-1)
}

// bucketRange returns the smallest and largest value a bucket holds.
func bucketRange(b int) (lo, hi time.Duration) {
	if b < 1<<subBits {
		return time.Duration(b), time.Duration(b)
	}
	e := b/subHalf - 1
	m := uint64(b%subHalf + subHalf)
	return time.Duration(m << uint(e)), time.Duration((m+1)<<uint(e) - 1)
}

func (h *histogram) record(d time.Duration) {
	h.counts[bucketOf(d)]++
	if h.n == 0 || d < h.min {
		h.min = d
	}
	if d > h.max {
		h.max = d
	}
	h.n++
	h.sum += d
}

func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// quantile returns the value below which a fraction q of the recorded
// durations fall, to the histogram's precision (the middle of the bucket,
// clamped to the exact min and max).
func (h *histogram) quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(q*float64(h.n) + 0.5)
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for b, c := range h.counts {
		seen += c
		if seen >= rank {
			lo, hi := bucketRange(b)
			return min(max(lo+(hi-lo)/2, h.min), h.max)
		}
	}
	return h.max
}

func (h *histogram) mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return h.sum / time.Duration(h.n)
}

// durations keeps a small number of exact samples, for measurements that run
// a few dozen times (http_sd fetches) where a median of exact values reads
// better than histogram buckets.
type durations []time.Duration

func (d durations) sorted() durations {
	s := append(durations(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s
}

// median of the samples; 0 when there are none.
func (d durations) median() time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := d.sorted()
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (d durations) minmax() (lo, hi time.Duration) {
	if len(d) == 0 {
		return 0, 0
	}
	s := d.sorted()
	return s[0], s[len(s)-1]
}

// cpuTimes is CPU time used by this process and, when its pid is known, by
// the server: on a shared 2-core machine the split tells how much of the
// measured rate the server itself could sustain.
type cpuTimes struct {
	self   time.Duration
	server time.Duration
	hasSrv bool
}

func sampleCPU(serverPID int) cpuTimes {
	var t cpuTimes
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		t.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if serverPID > 0 {
		if d, err := procCPU(serverPID); err == nil {
			t.server, t.hasSrv = d, true
		}
	}
	return t
}

// userHZ is the unit of /proc/PID/stat times; Linux fixes it at 100 for
// user space on every architecture we build for.
const userHZ = 100

// procCPU reads user+system CPU time of a process from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("read process stat: %w", err)
	}
	return parseProcStatCPU(string(b))
}

func parseProcStatCPU(s string) (time.Duration, error) {
	// The command name (field 2) is in parentheses and may contain spaces;
	// fields are counted after its closing parenthesis.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed process stat")
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed process stat: %d fields", len(f))
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed process stat times")
	}
	return time.Duration(utime+stime) * time.Second / userHZ, nil
}

// procMem is a process's memory from /proc/PID/status, in bytes: resident
// set, its peak, and the resident set split into anonymous memory (the Go
// heap and stacks) and file-backed pages (such as bolt's memory map).
type procMem struct {
	rss, hwm, anon, file int64
}

// procMemory reads a process's memory from /proc/PID/status.
func procMemory(pid int) (procMem, error) {
	var m procMem
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return m, fmt.Errorf("read process status: %w", err)
	}
	defer f.Close()
	fields := map[string]*int64{"VmRSS": &m.rss, "VmHWM": &m.hwm, "RssAnon": &m.anon, "RssFile": &m.file}
	sc := bufio.NewScanner(io.LimitReader(f, 1<<16))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		dst := fields[k]
		if !ok || dst == nil {
			continue
		}
		parts := strings.Fields(v)
		if len(parts) != 2 || parts[1] != "kB" {
			continue
		}
		if n, err := strconv.ParseInt(parts[0], 10, 64); err == nil {
			*dst = n << 10
		}
	}
	if err := sc.Err(); err != nil {
		return m, fmt.Errorf("read process status: %w", err)
	}
	return m, nil
}

func (m procMem) String() string {
	return fmt.Sprintf("%s (anonymous %s, file-backed %s), peak %s", mib(m.rss), mib(m.anon), mib(m.file), mib(m.hwm))
}

// table prints name/value rows aligned, under a title.
type table struct {
	title string
	rows  [][2]string
}

func (t *table) add(name, format string, args ...any) {
	t.rows = append(t.rows, [2]string{name, fmt.Sprintf(format, args...)})
}

func (t *table) write(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "%s\n", t.title)
	for _, r := range t.rows {
		fmt.Fprintf(tw, "  %s\t%s\n", r[0], r[1])
	}
	return tw.Flush()
}

// ms formats a duration in milliseconds with enough digits for sub-ms values.
func ms(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 3, 64) + " ms"
}

func mib(b int64) string {
	return strconv.FormatFloat(float64(b)/(1<<20), 'f', 1, 64) + " MiB"
}

// addLatency adds the usual latency rows of a histogram to a table.
func (t *table) addLatency(prefix string, h *histogram) {
	t.add(prefix+" p50", "%s", ms(h.quantile(0.50)))
	t.add(prefix+" p90", "%s", ms(h.quantile(0.90)))
	t.add(prefix+" p99", "%s", ms(h.quantile(0.99)))
	t.add(prefix+" p99.9", "%s", ms(h.quantile(0.999)))
	t.add(prefix+" max", "%s", ms(h.max))
}

// addCPU adds CPU use per operation: client and server time per op tell
// what each side would sustain with the machine to itself.
func (t *table) addCPU(before, after cpuTimes, ops uint64, wall time.Duration) {
	if ops == 0 || wall <= 0 {
		return
	}
	self := after.self - before.self
	t.add("load generator CPU", "%.2f cores, %.1f µs/op", self.Seconds()/wall.Seconds(), float64(self.Microseconds())/float64(ops))
	if before.hasSrv && after.hasSrv {
		srv := after.server - before.server
		perOp := float64(srv.Microseconds()) / float64(ops)
		t.add("server CPU", "%.2f cores, %.1f µs/op", srv.Seconds()/wall.Seconds(), perOp)
		if perOp > 0 {
			t.add("server-only capacity (2 cores)", "~%.0f ops/s", 2e6/perOp)
		}
	}
}
