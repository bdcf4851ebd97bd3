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
	"math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// heartbeatRequest renders the heartbeat request; closing asks the server
// to close the connection after it, as one request per connection does.
func heartbeatRequest(t *target, status string, closing bool) []byte {
	var body []byte
	if status != "" {
		body = []byte(`{"status":` + fmt.Sprintf("%q", status) + `}`)
	}
	hdr := map[string]string{}
	if body != nil {
		hdr["Content-Type"] = "application/json"
	}
	if closing {
		hdr["Connection"] = "close"
	}
	return request(http.MethodPost, t.host, protocol.PathHeartbeat, hdr, body)
}

// pacedJob is one scheduled heartbeat.
type pacedJob struct {
	agent int
	due   time.Time
}

// runPaced heartbeats like a fleet: every agent once per interval, the
// agents in random order and evenly spread, each heartbeat on a new mTLS
// connection with the agent's own certificate. The schedule does not wait
// for the server (open loop): when the workers fall behind, heartbeats
// start late, and the lag says by how much.
func runPaced(ctx context.Context, t *target, cfg HeartbeatConfig, ids []*agentIdentity, source string, out io.Writer) error {
	n := len(ids)
	order := rand.Perm(n)
	req := heartbeatRequest(t, cfg.Status, true)
	start := time.Now()
	measureFrom := start.Add(cfg.Warmup)
	end := measureFrom.Add(cfg.Duration)
	ctx, cancel := context.WithDeadline(ctx, end.Add(requestTimeout))
	defer cancel()

	jobs := make(chan pacedJob, cfg.Concurrency)
	go func() {
		defer close(jobs)
		for k := 0; ; k++ {
			due := start.Add(time.Duration(k) * cfg.Interval / time.Duration(n))
			if !due.Before(end) {
				return
			}
			// Sleeping for less than a millisecond costs more than the
			// precision is worth.
			if d := time.Until(due); d > time.Millisecond {
				sleep(ctx, d)
			}
			select {
			case jobs <- pacedJob{agent: order[k%n], due: due}:
			case <-ctx.Done():
				return
			}
		}
	}()

	var (
		mu       sync.Mutex
		lat, lag histogram
		ok       uint64
		errs     = make(map[string]uint64)
		first    string
		wg       sync.WaitGroup
	)
	cpu0 := sampleCPU(cfg.ServerPID)
	for range cfg.Concurrency {
		wg.Go(func() {
			var (
				myLat, myLag histogram
				myOK         uint64
				myErrs       = make(map[string]uint64)
				myFirst      string
			)
			for j := range jobs {
				began := time.Now()
				measured := !j.due.Before(measureFrom)
				err := pacedHeartbeat(ctx, t, ids[j.agent], cfg.Resume, req, began.Add(requestTimeout))
				if !measured {
					continue
				}
				myLag.record(began.Sub(j.due))
				if err != nil {
					myErrs[errorKind(err)]++
					myFirst = cmp.Or(myFirst, err.Error())
					continue
				}
				myLat.record(time.Since(began))
				myOK++
			}
			mu.Lock()
			lat.merge(&myLat)
			lag.merge(&myLag)
			ok += myOK
			for k, v := range myErrs {
				errs[k] += v
			}
			first = cmp.Or(first, myFirst)
			mu.Unlock()
		})
	}
	wg.Wait()
	cpu1 := sampleCPU(cfg.ServerPID)
	wall := time.Since(measureFrom)

	tb := &table{title: "bench heartbeat (paced like a fleet)"}
	tb.add("agents", "%d, %s", n, source)
	tb.add("schedule", "each agent every %s, spread evenly: %.0f heartbeats/s due", cfg.Interval, float64(n)/cfg.Interval.Seconds())
	handshake := "resuming the agent's TLS session"
	if !cfg.Resume {
		handshake = "a full handshake"
	}
	tb.add("connections", "a new mTLS connection (%s, agent's own certificate) per heartbeat, up to %d at once", handshake, cfg.Concurrency)
	tb.add("warm-up / measured", "%s / %s", cfg.Warmup, cfg.Duration)
	tb.add("heartbeats ok", "%d", ok)
	tb.add("errors", "%s", formatErrors(errs))
	if first != "" {
		tb.add("first error", "%s", first)
	}
	tb.add("heartbeats/s", "%.0f", float64(ok)/cfg.Duration.Seconds())
	tb.addLatency("latency (connect, handshake, request)", &lat)
	tb.addLatency("start lag behind schedule", &lag)
	tb.addCPU(cpu0, cpu1, ok, wall)
	if err := tb.write(out); err != nil {
		return err
	}
	if ok == 0 {
		return fmt.Errorf("no heartbeat succeeded: %s", first)
	}
	return nil
}

// requestTimeout bounds one paced heartbeat, connection included.
const requestTimeout = 10 * time.Second

// pacedHeartbeat sends one heartbeat on a connection of its own.
func pacedHeartbeat(ctx context.Context, t *target, id *agentIdentity, resume bool, req []byte, deadline time.Time) error {
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	c, err := dial(dctx, t.addr, t.agentTLS(id, resume))
	if err != nil {
		return err
	}
	defer c.Close()
	r, err := c.roundTrip(req, maxReplyBody, false, deadline)
	if err == nil && r.status != http.StatusOK {
		err = &statusError{r.status, ""}
	}
	return err
}
