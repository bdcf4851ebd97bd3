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
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// ConvergeConfig configures `bench converge`.
type ConvergeConfig struct {
	// ServerURL is the replica registrations go through; PeerURL the one
	// whose http_sd must show them. Both replicas share the CA and token
	// key in DataDir.
	ServerURL string
	PeerURL   string
	DataDir   string
	Count     int
	Duration  time.Duration
	// PollInterval is the pause between two http_sd reads of the peer.
	PollInterval time.Duration
	First        int
}

// probeLabel marks the agents `bench converge` registers, so that the peer
// is read through a small filtered view rather than the whole fleet.
const probeLabel = "bench_probe"

// RunConverge measures how long a registration through one replica takes
// to appear in another replica's http_sd.
func RunConverge(ctx context.Context, cfg ConvergeConfig, out io.Writer) error {
	if cfg.Count <= 0 || cfg.Duration <= 0 || cfg.PollInterval <= 0 {
		return fmt.Errorf("count, duration and poll interval must be positive")
	}
	pair, err := newReplicaPair(cfg.ServerURL, cfg.PeerURL, cfg.DataDir, ca.RoleDiscovery, cfg.Duration+time.Hour)
	if err != nil {
		return err
	}
	writer, reader, cert, token := pair.writer, pair.reader, pair.readerCert, pair.token
	ctx, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	deadline, _ := ctx.Deadline()

	wc, err := dial(ctx, writer.addr, writer.tlsConfig(nil))
	if err != nil {
		return err
	}
	defer func() { wc.Close() }()
	rc, err := dial(ctx, reader.addr, reader.tlsConfig(cert))
	if err != nil {
		return fmt.Errorf("peer: %w", err)
	}
	defer rc.Close()
	path := protocol.PathDiscovery + "?" + url.Values{"label": {probeLabel + "=1"}}.Encode()
	poll := request(http.MethodGet, reader.host, path, nil, nil)

	var lags durations
	for i := 0; i < cfg.Count && ctx.Err() == nil; i++ {
		id, err := newIdentity(cfg.First + i)
		if err != nil {
			return err
		}
		id.labels = map[string]string{probeLabel: "1"}
		if _, err := writer.register(wc, id, token, deadline); err != nil {
			return fmt.Errorf("register through %s: %w", cfg.ServerURL, err)
		}
		acked := time.Now()
		want := []byte(`"` + protocol.MetaAgentID + `":"` + id.id + `"`)
		for {
			r, err := rc.roundTrip(poll, maxSDBody, true, deadline)
			if err != nil {
				return fmt.Errorf("read http_sd of %s: %w", cfg.PeerURL, err)
			}
			if r.status != http.StatusOK {
				return fmt.Errorf("read http_sd of %s: %w", cfg.PeerURL, &statusError{r.status, truncate(r.body)})
			}
			if bytes.Contains(r.body, want) {
				lags = append(lags, time.Since(acked))
				break
			}
			if ctx.Err() != nil {
				return fmt.Errorf("agent %s registered through %s never appeared in %s's http_sd", id.id, cfg.ServerURL, cfg.PeerURL)
			}
			sleep(ctx, cfg.PollInterval)
		}
	}
	if len(lags) == 0 {
		return fmt.Errorf("no probe completed within %s", cfg.Duration)
	}
	lo, hi := lags.minmax()
	tb := &table{title: "bench converge"}
	tb.add("writer / reader", "%s / %s", cfg.ServerURL, cfg.PeerURL)
	tb.add("probes", "%d (reader polled every %s)", len(lags), cfg.PollInterval)
	tb.add("registration to peer's http_sd", "median %s (min %s, max %s)", ms(lags.median()), ms(lo), ms(hi))
	return tb.write(out)
}
