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

package etcd

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

const (
	// endpointProbeTimeout bounds one probe of all endpoints.
	endpointProbeTimeout = time.Second
	// endpointProbeReuse is how long a probe's finding is reused, so that a
	// burst of requests failing while etcd is down makes one probe.
	endpointProbeReuse = 5 * time.Second
)

// endpointProber explains why etcd requests time out. gRPC sets up its
// connections in the background and reports one that cannot be set up (an
// endpoint that refuses, a server certificate the CA does not sign, a
// client certificate etcd wants and was not given) only as requests that
// run out of time. The prober connects to every endpoint as the client
// does and names what failed.
type endpointProber struct {
	endpoints []string
	tls       *tls.Config

	mu      sync.Mutex
	at      time.Time
	finding string
}

// explain returns err with the probe's finding appended when err is a
// timeout or an unavailable connection and a probe found a cause.
func (p *endpointProber) explain(err error) error {
	if err == nil || !errors.Is(err, context.DeadlineExceeded) && !retryableEtcdErr(err) {
		return err
	}
	if finding := p.probe(); finding != "" {
		return fmt.Errorf("%w (connecting to etcd: %s)", err, finding)
	}
	return err
}

// probe returns what went wrong connecting to the endpoints, "" when every
// one accepted a connection, reusing a recent finding.
func (p *endpointProber) probe() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.at.IsZero() && time.Since(p.at) < endpointProbeReuse {
		return p.finding
	}
	ctx, cancel := context.WithTimeout(context.Background(), endpointProbeTimeout)
	defer cancel()
	findings := make([]string, len(p.endpoints))
	var wg sync.WaitGroup
	for i, ep := range p.endpoints {
		wg.Go(func() {
			if err := probeEndpoint(ctx, ep, p.tls); err != nil {
				findings[i] = ep + ": " + err.Error()
			}
		})
	}
	wg.Wait()
	var failed []string
	for _, f := range findings {
		if f != "" {
			failed = append(failed, f)
		}
	}
	p.at, p.finding = time.Now(), strings.Join(failed, "; ")
	return p.finding
}

// probeEndpoint connects to one endpoint and, over TLS, completes the
// handshake and waits briefly for the server's first bytes: with TLS 1.3
// a server that refuses the client's certificate says so only after the
// client has finished its side of the handshake.
func probeEndpoint(ctx context.Context, endpoint string, tlsConfig *tls.Config) error {
	u, err := url.Parse(endpoint)
	if err != nil || u.Host == "" {
		return nil // not ours to judge; the client reports bad endpoints
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		var opErr *net.OpError
		if errors.As(err, &opErr) && opErr.Err != nil {
			return opErr.Err
		}
		return err
	}
	defer conn.Close()
	if u.Scheme != "https" {
		return nil
	}
	cfg := &tls.Config{}
	if tlsConfig != nil {
		cfg = tlsConfig.Clone()
	}
	cfg.NextProtos = []string{"h2"}
	if cfg.ServerName == "" {
		cfg.ServerName = u.Hostname()
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		return err
	}
	deadline, _ := ctx.Deadline()
	_ = tc.SetReadDeadline(deadline)
	var b [1]byte
	if _, err := tc.Read(b[:]); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return err
	}
	return nil
}
