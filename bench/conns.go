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
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
)

// ConnsConfig configures `bench conns`.
type ConnsConfig struct {
	ServerURL string
	DataDir   string
	ServerPID int
	// Count connections are opened, each used for one request and then
	// held idle for Hold, as agents between heartbeats would.
	Count int
	Hold  time.Duration
}

// RunConns measures what idle keep-alive mTLS connections cost the server:
// its memory before and after opening them.
func RunConns(ctx context.Context, cfg ConnsConfig, out io.Writer) error {
	if cfg.Count <= 0 || cfg.ServerPID <= 0 {
		return fmt.Errorf("count and server.pid must be positive")
	}
	t, err := newTarget(cfg.ServerURL, cfg.DataDir)
	if err != nil {
		return err
	}
	cert, err := t.clientCert(ca.RoleDiscovery)
	if err != nil {
		return err
	}
	before, err := procMemory(cfg.ServerPID)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(cfg.Hold + 5*time.Minute)
	req := request(http.MethodGet, t.host, "/-/healthy", nil, nil)
	conns := make([]*conn, 0, cfg.Count)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range cfg.Count {
		c, err := dial(ctx, t.addr, t.tlsConfig(cert))
		if err != nil {
			return err
		}
		conns = append(conns, c)
		if _, err := c.roundTrip(req, maxReplyBody, false, deadline); err != nil {
			return err
		}
	}
	// Let the server settle: its per-connection buffers are what is left
	// once every connection waits for its next request.
	sleep(ctx, cfg.Hold)
	after, err := procMemory(cfg.ServerPID)
	if err != nil {
		return err
	}
	tb := &table{title: "bench conns"}
	tb.add("idle keep-alive mTLS connections", "%d, held %s", len(conns), cfg.Hold)
	tb.add("server RSS before", "%s", before)
	tb.add("server RSS with the connections", "%s", after)
	tb.add("per connection", "%.1f KiB RSS, %.1f KiB anonymous",
		float64(after.rss-before.rss)/1024/float64(len(conns)), float64(after.anon-before.anon)/1024/float64(len(conns)))
	return tb.write(out)
}
