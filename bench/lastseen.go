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
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// LastSeenConfig configures `bench lastseen`.
type LastSeenConfig struct {
	// ServerURL is the replica the probe heartbeats through; PeerURL the
	// one whose agent list must show the new last-seen time. Both share
	// the CA and token key in DataDir.
	ServerURL, PeerURL, DataDir string
	Count                       int
	Duration                    time.Duration
	// Spread is the range of the random pause between probes; the
	// writer's flush interval places the heartbeats evenly over its cycle.
	Spread time.Duration
	First  int
}

// lastSeenCounter is the server metric that moves when a flush wrote
// last-seen blobs to etcd.
const lastSeenCounter = "baremetal_sd_store_etcd_lastseen_keys_written_total"

// RunLastSeen measures how long a heartbeat through one replica takes to
// show in another replica's last-seen time. Heartbeats are answered from
// memory and written in batches, so this is the wait for the writer's next
// flush (at most --registry.flush-interval) plus the etcd watch. The wait
// for the flush is timed by polling the writer's own metrics, which are
// small; the peer's agent list, which is large, is read once per probe to
// check that the time arrived.
func RunLastSeen(ctx context.Context, cfg LastSeenConfig, out io.Writer) error {
	if cfg.Count <= 0 || cfg.Duration <= 0 || cfg.Spread <= 0 {
		return fmt.Errorf("count, duration and spread must be positive")
	}
	pair, err := newReplicaPair(cfg.ServerURL, cfg.PeerURL, cfg.DataDir, ca.RoleAdmin, cfg.Duration+time.Hour)
	if err != nil {
		return err
	}
	writer, reader, admin, token := pair.writer, pair.reader, pair.readerCert, pair.token
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	deadline, _ := ctx.Deadline()

	wc, err := dial(ctx, writer.addr, writer.tlsConfig(nil))
	if err != nil {
		return err
	}
	defer func() { wc.Close() }()
	probe, err := newIdentity(cfg.First)
	if err != nil {
		return err
	}
	probe.labels = map[string]string{probeLabel: "1"}
	if _, err := writer.register(wc, probe, token, deadline); err != nil {
		return fmt.Errorf("register the probe through %s: %w", cfg.ServerURL, err)
	}
	// The heartbeat and the agent list each get a connection of their own
	// when they are sent: between two of them lies a flush interval, and a
	// connection dialed that long before its first request has run into the
	// server's read timeout.
	once := func(t *target, cert *tls.Certificate, req []byte) (reply, error) {
		c, err := dial(ctx, t.addr, t.tlsConfig(cert))
		if err != nil {
			return reply{}, err
		}
		defer c.Close()
		return c.roundTrip(req, maxSDBody, true, deadline)
	}
	metricsReq := request(http.MethodGet, writer.host, "/metrics", nil, nil)
	heartbeat := heartbeatRequest(writer, "", true)
	listReq := request(http.MethodGet, reader.host, protocol.PathAgents, map[string]string{"Connection": "close"}, nil)

	counter := func() (float64, error) {
		r, err := wc.roundTrip(metricsReq, maxSDBody, true, deadline)
		if err != nil {
			return 0, fmt.Errorf("read metrics of %s: %w", cfg.ServerURL, err)
		}
		for line := range bytes.SplitSeq(r.body, []byte("\n")) {
			if v, ok := bytes.CutPrefix(line, []byte(lastSeenCounter+" ")); ok {
				return strconv.ParseFloat(string(v), 64)
			}
		}
		return 0, fmt.Errorf("%s has no %s: is it on --storage.backend=etcd?", cfg.ServerURL, lastSeenCounter)
	}
	peerLastSeen := func() (time.Time, error) {
		r, err := once(reader, admin, listReq)
		if err != nil {
			return time.Time{}, fmt.Errorf("list agents of %s: %w", cfg.PeerURL, err)
		}
		if r.status != http.StatusOK {
			return time.Time{}, fmt.Errorf("list agents of %s: %w", cfg.PeerURL, &statusError{r.status, truncate(r.body)})
		}
		var agents []discovery.AgentView
		if err := json.Unmarshal(r.body, &agents); err != nil {
			return time.Time{}, fmt.Errorf("decode agents of %s: %w", cfg.PeerURL, err)
		}
		for _, a := range agents {
			if a.ID == probe.id {
				return a.LastSeen, nil
			}
		}
		return time.Time{}, nil
	}

	var flushWaits, visible durations
	for i := 0; i < cfg.Count && ctx.Err() == nil; i++ {
		before, err := counter()
		if err != nil {
			return err
		}
		sent := time.Now()
		r, err := once(writer, probe.cert, heartbeat)
		if err == nil && r.status != http.StatusOK {
			err = &statusError{r.status, ""}
		}
		if err != nil {
			return fmt.Errorf("heartbeat through %s: %w", cfg.ServerURL, err)
		}
		for {
			now, err := counter()
			if err != nil {
				return err
			}
			if now > before {
				flushWaits = append(flushWaits, time.Since(sent))
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("no flush of %s within %s", cfg.ServerURL, cfg.Duration)
			}
			sleep(ctx, 20*time.Millisecond)
		}
		for {
			seen, err := peerLastSeen()
			if err != nil {
				return err
			}
			// The server stamps the heartbeat when it takes it, after sent;
			// the blobs keep milliseconds.
			if !seen.Before(sent.Truncate(time.Millisecond)) {
				visible = append(visible, time.Since(sent))
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("the probe's heartbeat never showed on %s", cfg.PeerURL)
			}
			sleep(ctx, 100*time.Millisecond)
		}
		// Start the next probe at a random point of the flush cycle.
		sleep(ctx, rand.N(cfg.Spread))
	}
	if len(visible) == 0 {
		return fmt.Errorf("no probe completed within %s", cfg.Duration)
	}
	flo, fhi := flushWaits.minmax()
	vlo, vhi := visible.minmax()
	tb := &table{title: "bench lastseen"}
	tb.add("writer / reader", "%s / %s", cfg.ServerURL, cfg.PeerURL)
	tb.add("probes", "%d", len(visible))
	tb.add("heartbeat to writer's next flush", "median %s (min %s, max %s)", ms(flushWaits.median()), ms(flo), ms(fhi))
	tb.add("heartbeat to peer's agent list", "median %s (min %s, max %s; includes reading the whole list)", ms(visible.median()), ms(vlo), ms(vhi))
	return tb.write(out)
}
