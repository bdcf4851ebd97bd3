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
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Who is to blame for a slow answer: the server or the machine. The kernel
// counts, per thread, the time it ran on a CPU and the time it waited in a
// run queue for one (/proc/PID/task/TID/schedstat). Summed over the
// server's threads across a slow request: much waiting means the server was
// ready to work and the machine did not let it; much running means it was
// busy (its own work, or the race detector's); little of both means it
// waited on something of its own (a lock, a disk).

// slowAnswer is the bound above which a check's answer is examined.
const slowAnswer = 5 * time.Second

// schedStat is the CPU time a process' threads ran and waited to run.
type schedStat struct {
	Run, Wait time.Duration
	Threads   int
}

// procSched sums the scheduler statistics of every thread of pid.
func procSched(pid int) (schedStat, error) {
	var s schedStat
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return s, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(filepath.Join(fmt.Sprintf("/proc/%d/task", pid), t.Name(), "schedstat"))
		if err != nil {
			continue // the thread ended meanwhile
		}
		var run, wait int64
		if _, err := fmt.Sscan(string(b), &run, &wait); err != nil {
			continue
		}
		s.Run += time.Duration(run)
		s.Wait += time.Duration(wait)
		s.Threads++
	}
	return s, nil
}

// loadAvg returns the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// timedCheck runs one check request to server s, keeps its latency and, if
// it was slow, what the server's threads did meanwhile.
func (c *chaos) timedCheck(s *chaosServer, what string, do func()) {
	pid := s.pid()
	before, errBefore := procSched(pid)
	start := time.Now()
	do()
	took := time.Since(start)
	c.mu.Lock()
	c.checkLatency[s.name] = append(c.checkLatency[s.name], took)
	c.mu.Unlock()
	if took < slowAnswer || !s.available() || s.pid() != pid {
		return
	}
	after, err := procSched(pid)
	detail := "no scheduler statistics"
	if errBefore == nil && err == nil {
		detail = fmt.Sprintf("server threads meanwhile: ran %s, waited for a CPU %s (%d threads)",
			(after.Run - before.Run).Round(time.Millisecond), (after.Wait - before.Wait).Round(time.Millisecond), after.Threads)
	}
	c.mu.Lock()
	c.slow = append(c.slow, fmt.Sprintf("%s: server %s %s took %s; %s; load average %s",
		time.Since(c.faultStart).Round(time.Second), s.name, what, took.Round(time.Millisecond), detail, loadAvg()))
	c.mu.Unlock()
}

// latencySummary describes check latencies: count, median, 99th
// percentile, max and how many took slowAnswer or more.
func latencySummary(ls []time.Duration) string {
	if len(ls) == 0 {
		return "none"
	}
	s := slices.Sorted(slices.Values(ls))
	slow := 0
	for _, l := range s {
		if l >= slowAnswer {
			slow++
		}
	}
	return fmt.Sprintf("%d requests, median %s, p99 %s, max %s, %d of them %s or more",
		len(s), s[len(s)/2].Round(time.Millisecond), s[len(s)*99/100].Round(time.Millisecond),
		s[len(s)-1].Round(time.Millisecond), slow, slowAnswer)
}

// serverTimings returns the server's own latency histograms of store
// operations and http_sd rebuilds, since its last start, as count, sum and
// how many took longer than 0.4 s.
func serverTimings(body []byte) []string {
	var out []string
	for _, line := range strings.Split(string(body), "\n") {
		for _, name := range []string{"baremetal_sd_store_operation_duration_seconds", "baremetal_sd_httpsd_rebuild_duration_seconds"} {
			if strings.HasPrefix(line, name+"_sum") || strings.HasPrefix(line, name+"_count") ||
				strings.HasPrefix(line, name+"_bucket") && strings.Contains(line, `le="0.4096"`) {
				out = append(out, line)
			}
		}
	}
	return out
}
