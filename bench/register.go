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
	"cmp"
	"context"
	"fmt"
	"io"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// RegisterConfig configures `bench register`.
type RegisterConfig struct {
	ServerURL string
	DataDir   string
	// Count bounds the registrations, Duration the time they may take.
	Count       int
	Concurrency int
	Duration    time.Duration
	// KeepAlive reuses one connection per worker instead of a new TLS
	// connection (full handshake) per registration.
	KeepAlive bool
	// Pregenerate makes every key and CSR before the clock starts. Agents
	// generate their keys on their own hosts; pre-generating takes that CPU
	// off the machine the server is measured on.
	Pregenerate bool
	// SingleUse enrolls each agent with its own single-use token, which adds
	// a durable token claim to every registration.
	SingleUse bool
	// ServerPID, when set, adds the server's CPU time per registration.
	ServerPID int
	// First numbers the simulated hosts, so that runs can differ.
	First int
	// SaveFile, when set, receives the enrolled agents' ids, keys and
	// certificates for `bench heartbeat --agents.file`.
	SaveFile string
	// Tunnel registers the agents for tunnels (`bench tunnels`).
	Tunnel bool
}

// registerResult is the outcome of a registration run.
type registerResult struct {
	ok     uint64
	errors map[string]uint64
	// firstErr is one error message, to tell why a run failed.
	firstErr string
	lat      histogram
	wall     time.Duration
	cpu      [2]cpuTimes
	// ids holds the enrolled identities when they were asked for.
	ids []*agentIdentity
}

// registerMany enrolls up to cfg.Count agents with cfg.Concurrency workers.
// With keep set, the enrolled identities are returned in res.ids (in no
// particular order).
func registerMany(ctx context.Context, t *target, cfg RegisterConfig, keep bool) (*registerResult, error) {
	if cfg.Count <= 0 || cfg.Concurrency <= 0 || cfg.Duration <= 0 {
		return nil, fmt.Errorf("count, concurrency and duration must be positive")
	}
	var pre []*agentIdentity
	if cfg.Pregenerate {
		pre = make([]*agentIdentity, cfg.Count)
		for i := range pre {
			id, err := newIdentity(cfg.First + i)
			if err != nil {
				return nil, err
			}
			id.tunnel = cfg.Tunnel
			pre[i] = id
		}
	}
	var shared string
	if !cfg.SingleUse {
		var err error
		// Valid for the run plus slack; one token for all, as a fleet image
		// would carry it.
		if shared, err = t.enrollToken(cfg.Duration+time.Hour, false); err != nil {
			return nil, err
		}
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	deadline, _ := ctx.Deadline()
	var (
		next    atomic.Int64
		mu      sync.Mutex
		res     = &registerResult{errors: make(map[string]uint64)}
		wg      sync.WaitGroup
		baseCfg = t.tlsConfig(nil)
	)
	res.cpu[0] = sampleCPU(cfg.ServerPID)
	start := time.Now()
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var (
				h      histogram
				ok     uint64
				errs   = make(map[string]uint64)
				first  string
				ids    []*agentIdentity
				c      *conn
				closeC = func() {
					if c != nil {
						c.Close()
						c = nil
					}
				}
			)
			defer closeC()
			for running(ctx, deadline) {
				n := int(next.Add(1) - 1)
				if n >= cfg.Count {
					break
				}
				var id *agentIdentity
				if pre != nil {
					id = pre[n]
				} else {
					var err error
					if id, err = newIdentity(cfg.First + n); err != nil {
						errs["keygen"]++
						continue
					}
					id.tunnel = cfg.Tunnel
				}
				token := shared
				if cfg.SingleUse {
					var err error
					if token, err = t.enrollToken(cfg.Duration+time.Hour, true); err != nil {
						errs["token"]++
						continue
					}
				}
				began := time.Now()
				if c == nil {
					var err error
					if c, err = dial(ctx, t.addr, baseCfg); err != nil {
						if running(ctx, deadline) {
							errs["dial"]++
							first = cmp.Or(first, err.Error())
						}
						continue
					}
				}
				_, err := t.register(c, id, token, deadline)
				if !cfg.KeepAlive || err != nil {
					closeC()
				}
				if err != nil {
					if running(ctx, deadline) {
						errs[errorKind(err)]++
						first = cmp.Or(first, err.Error())
					}
					continue
				}
				h.record(time.Since(began))
				ok++
				if keep {
					ids = append(ids, id)
				}
			}
			mu.Lock()
			res.lat.merge(&h)
			res.ok += ok
			for k, v := range errs {
				res.errors[k] += v
			}
			res.ids = append(res.ids, ids...)
			res.firstErr = cmp.Or(res.firstErr, first)
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.wall = time.Since(start)
	res.cpu[1] = sampleCPU(cfg.ServerPID)
	return res, nil
}

// RunRegister measures registrations per second end to end.
func RunRegister(ctx context.Context, cfg RegisterConfig, out io.Writer) error {
	t, err := newTarget(cfg.ServerURL, cfg.DataDir)
	if err != nil {
		return err
	}
	res, err := registerMany(ctx, t, cfg, cfg.SaveFile != "")
	if err != nil {
		return err
	}
	if cfg.SaveFile != "" {
		if err := saveIdentities(cfg.SaveFile, res.ids); err != nil {
			return fmt.Errorf("save enrolled agents: %w", err)
		}
	}
	conns := "new TLS connection per registration"
	if cfg.KeepAlive {
		conns = "keep-alive connection per worker"
	}
	keys := "generated per registration, inside the timed loop"
	if cfg.Pregenerate {
		keys = "pre-generated before the clock starts"
	}
	tb := &table{title: "bench register"}
	tb.add("connections", "%s", conns)
	tb.add("agent keys", "ECDSA P-256, %s", keys)
	tb.add("tokens", "%s", map[bool]string{false: "one shared enrollment token", true: "one single-use token per agent"}[cfg.SingleUse])
	tb.add("concurrency", "%d", cfg.Concurrency)
	tb.add("registrations ok", "%d of %d", res.ok, cfg.Count)
	tb.add("errors", "%s", formatErrors(res.errors))
	if res.firstErr != "" {
		tb.add("first error", "%s", res.firstErr)
	}
	tb.add("wall time", "%s", res.wall.Round(time.Millisecond))
	tb.add("registrations/s", "%.0f", float64(res.ok)/res.wall.Seconds())
	tb.addLatency("latency", &res.lat)
	tb.addCPU(res.cpu[0], res.cpu[1], res.ok, res.wall)
	if err := tb.write(out); err != nil {
		return err
	}
	if res.ok == 0 {
		return fmt.Errorf("no registration succeeded: %s", res.firstErr)
	}
	return nil
}

func formatErrors(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	s := ""
	for i, k := range keys {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s=%d", k, m[k])
	}
	return s
}
