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
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/baremetal-sd/baremetal_sd/tunnel"
)

// TunnelsConfig configures `bench tunnels`.
type TunnelsConfig struct {
	ServerURL string
	DataDir   string
	ServerPID int
	// Count agents register for tunnels and each keeps one tunnel to the
	// server, idle, for Hold before the server's memory is read.
	Count int
	Hold  time.Duration
	// Restart waits, after the memory is read, for the server to lose
	// every tunnel (an operator restarts it) and measures until they are
	// all back.
	Restart bool
	Timeout time.Duration
}

// RunTunnels measures what idle tunnels cost the server, and with Restart
// how long agents take to reconnect after a server restart.
func RunTunnels(ctx context.Context, cfg TunnelsConfig, out io.Writer) error {
	if cfg.Count <= 0 || cfg.ServerPID <= 0 || cfg.Timeout <= 0 {
		return fmt.Errorf("count, server.pid and timeout must be positive")
	}
	t, err := newTarget(cfg.ServerURL, cfg.DataDir)
	if err != nil {
		return err
	}
	reg, err := registerMany(ctx, t, RegisterConfig{
		ServerURL: cfg.ServerURL, DataDir: cfg.DataDir, Count: cfg.Count, Concurrency: 32,
		Duration: cfg.Timeout, Pregenerate: true, KeepAlive: true, First: 5000000, Tunnel: true,
	}, true)
	if err != nil {
		return err
	}
	if len(reg.ids) != cfg.Count {
		return fmt.Errorf("registered %d of %d agents: %s", len(reg.ids), cfg.Count, formatErrors(reg.errors))
	}
	before, err := procMemory(cfg.ServerPID)
	if err != nil {
		return err
	}
	// One kept-alive connection reads the server's metrics: a poll that
	// needed a handshake of its own would wait behind the agents' while
	// they reconnect, and see their tunnels late.
	mc := &http.Client{Transport: &http.Transport{TLSClientConfig: t.tlsConfig(nil), MaxIdleConnsPerHost: 1}}
	defer mc.CloseIdleConnections()
	goBefore, err := serverRuntime(ctx, mc, cfg.ServerURL)
	if err != nil {
		return err
	}
	// The clients stop before they are waited for: deferred calls run in
	// reverse order.
	var wg sync.WaitGroup
	defer wg.Wait()
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	metrics := tunnel.NewClientMetrics(nil)
	start := time.Now()
	for _, id := range reg.ids {
		c, err := tunnel.NewClient(tunnel.ClientConfig{
			Servers: []string{cfg.ServerURL},
			TLS:     t.agentTLS(id, true),
			// Nothing is scraped: the tunnels idle.
			Local:   "127.0.0.1:9",
			Metrics: metrics,
		})
		if err != nil {
			return err
		}
		wg.Go(func() { c.Run(runCtx) })
	}
	count := func() (float64, error) { return serverTunnels(ctx, mc, cfg.ServerURL) }
	if err := waitTunnelCount(ctx, count, cfg.Timeout, func(n float64) bool { return n == float64(cfg.Count) }); err != nil {
		return err
	}
	connected := time.Since(start)
	startFailures, startSum := failures(metrics, cfg.ServerURL)
	sleep(ctx, cfg.Hold)
	after, err := procMemory(cfg.ServerPID)
	if err != nil {
		return err
	}
	goAfter, err := serverRuntime(ctx, mc, cfg.ServerURL)
	if err != nil {
		return err
	}
	tb := &table{title: "bench tunnels"}
	tb.add("agents with an idle tunnel", "%d, held %s", cfg.Count, cfg.Hold)
	tb.add("all tunnels up after the start", "%s", connected.Round(time.Millisecond))
	tb.add("failed attempts during the start", "%.0f: %s", startSum, formatFailures(startFailures))
	tb.add("server RSS before", "%s", before)
	tb.add("server RSS with the tunnels", "%s", after)
	tb.add("added", "%.1f MiB, %.1f KiB per tunnel", float64(after.rss-before.rss)/(1<<20), float64(after.rss-before.rss)/1024/float64(cfg.Count))
	// Where the RSS goes: live heap and goroutine stacks per tunnel, and
	// the heap the garbage collector lets grow before its next cycle
	// (with GOGC=100 twice the live heap: most of the rest of the RSS).
	per := func(name string) float64 { return (goAfter[name] - goBefore[name]) / float64(cfg.Count) }
	tb.add("per tunnel: goroutines", "%.2f", per("go_goroutines"))
	tb.add("per tunnel: heap in use", "%.1f KiB", per("go_memstats_heap_inuse_bytes")/1024)
	tb.add("per tunnel: stacks in use", "%.1f KiB", per("go_memstats_stack_inuse_bytes")/1024)
	tb.add("per tunnel: next GC target", "%.1f KiB", per("go_memstats_next_gc_bytes")/1024)
	if cfg.Restart {
		fmt.Fprintln(out, "restart the server now")
		if err := waitTunnelCount(ctx, count, cfg.Timeout, func(n float64) bool { return n < float64(cfg.Count) }); err != nil {
			return err
		}
		lost := time.Now()
		// When the first tunnel (the server is back), a half, nine tenths
		// and 99 % of them were back: the tail is the agents' backoff.
		marks := []float64{1 / float64(cfg.Count), 0.5, 0.9, 0.99}
		reached := make([]time.Duration, len(marks))
		if err := waitTunnelCount(ctx, count, cfg.Timeout, func(n float64) bool {
			for i, m := range marks {
				if reached[i] == 0 && n >= m*float64(cfg.Count) {
					reached[i] = time.Since(lost)
				}
			}
			return n == float64(cfg.Count)
		}); err != nil {
			return err
		}
		r := func(i int) time.Duration { return reached[i].Round(100 * time.Millisecond) }
		tb.add("all tunnels back after the restart", "%s (from the first one lost; first back %s, half %s, 90 %% %s, 99 %% %s)",
			time.Since(lost).Round(time.Millisecond), r(0), r(1), r(2), r(3))
		// Refused attempts find the server down, which a restart is;
		// every other failure is an error the agents hit once it was
		// back (or, for connect timeouts, a network that drops packets).
		byReason, sum := failures(metrics, cfg.ServerURL)
		for r, n := range startFailures {
			byReason[r] -= n
		}
		sum -= startSum
		tb.add("failed connection attempts", "%.0f: %s", sum, formatFailures(byReason))
		tb.add("failed after the server was back", "%.0f (all but refused)", sum-byReason["refused"])
	}
	return tb.write(out)
}

// failures is the agents' failed tunnel attempts to the server, by
// reason, and their sum.
func failures(m *tunnel.ClientMetrics, serverURL string) (map[string]float64, float64) {
	u, err := url.Parse(serverURL)
	if err != nil {
		return nil, 0
	}
	ch := make(chan prometheus.Metric)
	go func() { m.Failures.Collect(ch); close(ch) }()
	byReason := map[string]float64{}
	var sum float64
	for metric := range ch {
		var out dto.Metric
		if err := metric.Write(&out); err != nil {
			continue
		}
		labels := map[string]string{}
		for _, l := range out.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["server"] != u.Host {
			continue
		}
		byReason[labels["reason"]] += out.GetCounter().GetValue()
		sum += out.GetCounter().GetValue()
	}
	return byReason, sum
}

// formatFailures lists the reasons with failures, most first.
func formatFailures(byReason map[string]float64) string {
	reasons := make([]string, 0, len(byReason))
	for r, n := range byReason {
		if n > 0 {
			reasons = append(reasons, r)
		}
	}
	if len(reasons) == 0 {
		return "none"
	}
	sort.Slice(reasons, func(i, j int) bool {
		if byReason[reasons[i]] != byReason[reasons[j]] {
			return byReason[reasons[i]] > byReason[reasons[j]]
		}
		return reasons[i] < reasons[j]
	})
	parts := make([]string, len(reasons))
	for i, r := range reasons {
		parts[i] = fmt.Sprintf("%s %.0f", r, byReason[r])
	}
	return strings.Join(parts, ", ")
}

// serverTunnels reads baremetal_sd_tunnel_tunnels from the server's
// /metrics; 0 while it does not answer (a restart in progress).
func serverTunnels(ctx context.Context, c *http.Client, serverURL string) (float64, error) {
	body, err := serverMetrics(ctx, c, serverURL)
	if err != nil || body == nil {
		return 0, err
	}
	const name = "baremetal_sd_tunnel_tunnels"
	return scrapeValues(body, []string{name})[name], nil
}

// serverMetrics returns the body of the server's /metrics; nil while it
// does not answer.
func serverMetrics(ctx context.Context, c *http.Client, serverURL string) ([]byte, error) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, serverURL+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, nil
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("server /metrics answered %s", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, nil
	}
	return body, nil
}

// serverRuntime reads the server's Go runtime gauges that the bench
// reports from its /metrics.
func serverRuntime(ctx context.Context, c *http.Client, serverURL string) (map[string]float64, error) {
	body, err := serverMetrics(ctx, c, serverURL)
	if err != nil {
		return nil, err
	}
	if body == nil {
		return nil, errors.New("the server's /metrics did not answer")
	}
	return scrapeValues(body, []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_memstats_next_gc_bytes"}), nil
}

func waitTunnelCount(ctx context.Context, count func() (float64, error), timeout time.Duration, ok func(float64) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		n, err := count()
		if err != nil {
			return err
		}
		if ok(n) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up after %s: the server holds %v tunnels", timeout, n)
		}
		sleep(ctx, 200*time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}
