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
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// HeartbeatConfig configures `bench heartbeat`.
type HeartbeatConfig struct {
	ServerURL string
	DataDir   string
	// Agents are enrolled first (through the API); the workers then share
	// their certificates round-robin.
	Agents int
	// AgentFiles, when set, replace the enrollment: the agents `bench
	// register --save` enrolled, each heartbeating with its own
	// certificate.
	AgentFiles []string
	// Interval paces the run like a fleet: every agent heartbeats once per
	// interval, the agents spread evenly over it, each heartbeat on a new
	// connection. Zero runs the workers as fast as they go.
	Interval time.Duration
	// NewConnection opens a new mTLS connection per heartbeat, and takes
	// the next agent for each, instead of one keep-alive connection and
	// agent per worker. Agents close idle connections after 30 s and
	// heartbeat every 75 s by default, so every real heartbeat is a full
	// handshake.
	NewConnection bool
	// Resume resumes each agent's previous TLS session on its new
	// connections, as the agent's client does.
	Resume bool
	// Concurrency is the number of workers, each with its own keep-alive
	// mTLS connection (or, paced or with NewConnection, at most that many
	// heartbeats in flight).
	Concurrency int
	// Warmup runs heartbeats that are not counted, Duration those that are;
	// Count bounds the counted heartbeats.
	Warmup   time.Duration
	Duration time.Duration
	Count    int
	// Status is the heartbeat body's status; empty sends no body.
	Status    string
	ServerPID int
	First     int
}

// maxWorkerErrors stops a worker whose connection keeps failing instead of
// spinning on a broken server.
const maxWorkerErrors = 100

// RunHeartbeat measures heartbeats per second and their latency over
// keep-alive mTLS connections.
func RunHeartbeat(ctx context.Context, cfg HeartbeatConfig, out io.Writer) error {
	if cfg.Agents <= 0 || cfg.Concurrency <= 0 || cfg.Duration <= 0 || cfg.Count <= 0 {
		return fmt.Errorf("agents, concurrency, duration and count must be positive")
	}
	t, err := newTarget(cfg.ServerURL, cfg.DataDir)
	if err != nil {
		return err
	}
	var ids []*agentIdentity
	source := ""
	if len(cfg.AgentFiles) > 0 {
		if ids, err = loadIdentities(cfg.AgentFiles); err != nil {
			return err
		}
		source = "loaded from " + strings.Join(cfg.AgentFiles, ", ")
	} else {
		enrolled, err := registerMany(ctx, t, RegisterConfig{
			Count: cfg.Agents, Concurrency: 16, Duration: 5 * time.Minute,
			KeepAlive: true, First: cfg.First,
		}, true)
		if err != nil {
			return err
		}
		if len(enrolled.ids) == 0 {
			return fmt.Errorf("no agent could enroll: %s", enrolled.firstErr)
		}
		ids = enrolled.ids
		source = fmt.Sprintf("enrolled first (errors: %s)", formatErrors(enrolled.errors))
	}
	if cfg.Resume {
		// Made up front: workers may share an agent.
		for _, id := range ids {
			id.sessions = tls.NewLRUClientSessionCache(1)
		}
	}
	if cfg.Interval > 0 {
		return runPaced(ctx, t, cfg, ids, source, out)
	}

	req := heartbeatRequest(t, cfg.Status, cfg.NewConnection)
	var nextAgent atomic.Int64

	total := cfg.Warmup + cfg.Duration
	runCtx, cancel := context.WithTimeout(ctx, total)
	defer cancel()
	deadline, _ := runCtx.Deadline()
	measureFrom := time.Now().Add(cfg.Warmup)

	var (
		counted atomic.Int64
		mu      sync.Mutex
		lat     histogram
		ok      uint64
		errs    = make(map[string]uint64)
		first   string
		wg      sync.WaitGroup
		cpu     [2]cpuTimes
		started = make(chan struct{})
		ready   sync.WaitGroup
	)
	ready.Add(cfg.Concurrency)
	for w := range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := ids[w%len(ids)]
			tlsCfg := t.tlsConfig(id.cert)
			var c *conn
			var err error
			if !cfg.NewConnection {
				c, err = dial(runCtx, t.addr, tlsCfg)
			}
			ready.Done()
			<-started
			var (
				h        histogram
				n        uint64
				myErrs   = make(map[string]uint64)
				myFirst  string
				failures int
			)
			if err != nil {
				myErrs["dial"]++
				myFirst = err.Error()
				failures++
			}
			for running(runCtx, deadline) && failures < maxWorkerErrors {
				began := time.Now()
				if cfg.NewConnection {
					// The next agent, on a connection of its own.
					id = ids[int(nextAgent.Add(1)-1)%len(ids)]
					tlsCfg = t.agentTLS(id, cfg.Resume)
				}
				if c == nil {
					if c, err = dial(runCtx, t.addr, tlsCfg); err != nil {
						if running(runCtx, deadline) {
							myErrs["dial"]++
							myFirst = cmp.Or(myFirst, err.Error())
							failures++
						}
						continue
					}
				}
				measured := began.After(measureFrom)
				if measured && counted.Add(1) > int64(cfg.Count) {
					break
				}
				r, err := c.roundTrip(req, maxReplyBody, false, deadline)
				if err == nil && r.status != http.StatusOK {
					err = &statusError{r.status, ""}
				}
				if err != nil || cfg.NewConnection {
					c.Close()
					c = nil
				}
				if err != nil {
					if running(runCtx, deadline) {
						myErrs[errorKind(err)]++
						myFirst = cmp.Or(myFirst, err.Error())
						failures++
					}
					continue
				}
				if measured {
					// With a new connection, the handshake is part of it.
					h.record(time.Since(began))
					n++
				}
			}
			if c != nil {
				c.Close()
			}
			mu.Lock()
			lat.merge(&h)
			ok += n
			for k, v := range myErrs {
				errs[k] += v
			}
			first = cmp.Or(first, myFirst)
			mu.Unlock()
		}()
	}
	// Connections are set up before the clock starts, so the handshakes of
	// many workers do not count against the heartbeat rate.
	ready.Wait()
	close(started)
	sleep(runCtx, time.Until(measureFrom))
	cpu[0] = sampleCPU(cfg.ServerPID)
	start := time.Now()
	wg.Wait()
	wall := time.Since(start)
	cpu[1] = sampleCPU(cfg.ServerPID)

	tb := &table{title: "bench heartbeat"}
	tb.add("agents", "%d, %s", len(ids), source)
	if cfg.NewConnection {
		tb.add("connections", "a new mTLS connection per heartbeat, the next agent each, %d workers, resuming TLS sessions: %v", cfg.Concurrency, cfg.Resume)
	} else {
		tb.add("connections", "%d keep-alive mTLS, one worker and agent each", cfg.Concurrency)
	}
	tb.add("warm-up / measured", "%s / %s", cfg.Warmup, wall.Round(time.Millisecond))
	tb.add("heartbeats ok", "%d", ok)
	tb.add("errors", "%s", formatErrors(errs))
	if first != "" {
		tb.add("first error", "%s", first)
	}
	tb.add("heartbeats/s", "%.0f", float64(ok)/wall.Seconds())
	tb.addLatency("latency", &lat)
	tb.addCPU(cpu[0], cpu[1], ok, wall)
	if err := tb.write(out); err != nil {
		return err
	}
	if ok == 0 {
		return fmt.Errorf("no heartbeat succeeded: %s", first)
	}
	return nil
}

// running reports whether a run is still on. Requests that fail because the
// run's deadline passed are not errors; the context's own timer may fire a
// little after the deadline that connections already enforce.
func running(ctx context.Context, deadline time.Time) bool {
	return ctx.Err() == nil && time.Now().Before(deadline)
}

// sleep waits for d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
