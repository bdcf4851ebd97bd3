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

package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/yamux"

	"github.com/baremetal-sd/baremetal_sd/internal/bufpool"
)

// Defaults of ClientConfig.
const (
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 30 * time.Second
	// stableAfter is how long a tunnel must have lived for the next
	// reconnection to start again at the shortest backoff.
	stableAfter = time.Minute
	// DefaultHandshakeTimeout bounds the TLS handshake and the upgrade,
	// once connected. It is longer than a busy server lets a handshake
	// wait for its turn (web.WithHandshakeLimit): the server
	// turns away what it cannot serve, and an agent that gave up first
	// would have cost it a handshake for nothing.
	DefaultHandshakeTimeout = 45 * time.Second
	// reconnectSpread is the window, in MinBackoffs, over which an agent
	// spreads its first attempt after losing a tunnel that was up: when a
	// server restarts, all its agents lose their tunnels in the same
	// instant.
	reconnectSpread = 5
)

// ClientConfig configures the agent half.
type ClientConfig struct {
	// Servers are the base URLs of the discovery servers (https://host:port);
	// the agent keeps one tunnel to each.
	Servers []string
	// TLS verifies the servers and presents the agent's certificate. The
	// client uses a copy that speaks HTTP/1.1 only.
	TLS *tls.Config
	// Listener, when set, is the agent's own TLS listener: every stream
	// is handed to it in process, so that the scraper's TLS session ends
	// there.
	Listener *Listener
	// Local is host:port of the agent's own TLS listener, which every
	// stream dials when Listener is nil.
	Local string
	// MaxStreams bounds the streams open at once per tunnel.
	MaxStreams int
	// MinBackoff and MaxBackoff bound the wait between reconnections,
	// which doubles and is jittered.
	MinBackoff, MaxBackoff time.Duration
	// Dialer dials the servers and the local listener; nil takes a
	// net.Dialer with a 10 s timeout.
	Dialer *net.Dialer
	// HandshakeTimeout bounds the TLS handshake and the upgrade once
	// connected; 0 takes DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	Metrics          *ClientMetrics
	Logger           *slog.Logger
}

// Client keeps the agent's tunnels.
type Client struct {
	cfg     ClientConfig
	servers []*url.URL
	// pipes lends the in-process connections to the Listener their
	// buffers.
	pipes bufpool.Pool
}

// NewClient checks the configuration.
func NewClient(cfg ClientConfig) (*Client, error) {
	if len(cfg.Servers) == 0 {
		return nil, errors.New("tunnel: no server given")
	}
	if cfg.Listener == nil && cfg.Local == "" {
		return nil, errors.New("tunnel: no local listener given")
	}
	servers := make([]*url.URL, 0, len(cfg.Servers))
	for _, raw := range cfg.Servers {
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "https" || u.Host == "" {
			return nil, fmt.Errorf("tunnel: server %q is not an https:// URL", raw)
		}
		servers = append(servers, u)
	}
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreamsPerAgent
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.Dialer == nil {
		cfg.Dialer = &net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewClientMetrics(nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	tc := cfg.TLS.Clone()
	if tc == nil {
		tc = &tls.Config{}
	}
	tc.NextProtos = []string{"http/1.1"}
	if len(tc.CurvePreferences) == 0 {
		// Classical key exchange only: the hybrid post-quantum key share
		// (X25519MLKEM768, Go's first choice) makes the ClientHello 1.2 KiB
		// larger, and the server's TLS connection keeps buffers sized for
		// it as long as the tunnel lives, about 3.5 KiB per tunnel. What
		// the tunnel carries is the scrapers' own TLS sessions with the
		// agent, which negotiate their key exchange themselves; the tunnel
		// layer adds the agent's identity and the stream framing.
		tc.CurvePreferences = []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}
	}
	leafOnly(tc)
	cfg.TLS = tc
	return &Client{cfg: cfg, servers: servers}, nil
}

// leafOnly makes tc present the agent's certificate without its chain.
// The server verifies agent certificates against the agent CA in its own
// pool and accepts no chain that runs through the agent CA to another root
// (ca.Authority.VerifiedClient), so the issuer the agent would send is of
// no use to it; but the server would parse and keep it for the life of the
// tunnel, about 2 KiB per tunnel.
func leafOnly(tc *tls.Config) {
	trim := func(c *tls.Certificate) *tls.Certificate {
		if c == nil || len(c.Certificate) <= 1 {
			return c
		}
		leaf := *c
		leaf.Certificate = c.Certificate[:1]
		return &leaf
	}
	// Clone shares the slice with the caller's configuration.
	tc.Certificates = slices.Clone(tc.Certificates)
	for i := range tc.Certificates {
		tc.Certificates[i] = *trim(&tc.Certificates[i])
	}
	if get := tc.GetClientCertificate; get != nil {
		tc.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
			c, err := get(cri)
			return trim(c), err
		}
	}
}

// Run keeps a tunnel to every server until ctx ends.
func (c *Client) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, u := range c.servers {
		wg.Go(func() { c.keep(ctx, u) })
	}
	wg.Wait()
}

// keep keeps one server's tunnel, reconnecting with backoff and jitter.
func (c *Client) keep(ctx context.Context, u *url.URL) {
	server := u.Host
	up := c.cfg.Metrics.Up.WithLabelValues(server)
	for _, r := range failureReasons {
		c.cfg.Metrics.Failures.WithLabelValues(server, r)
	}
	tc := c.cfg.TLS
	if tc.ServerName == "" {
		tc = tc.Clone()
		tc.ServerName = u.Hostname()
	}
	attempt := 0
	for ctx.Err() == nil {
		start := time.Now()
		mux, err := c.open(ctx, u, tc)
		if err != nil {
			c.cfg.Metrics.Failures.WithLabelValues(server, failureReason(err)).Inc()
			if attempt == 0 {
				c.cfg.Logger.Warn("Cannot open the tunnel to the discovery server; retrying", "server", server, "err", err)
			} else {
				c.cfg.Logger.Debug("Cannot open the tunnel to the discovery server", "server", server, "err", err)
			}
		} else {
			up.Set(1)
			c.cfg.Logger.Info("Tunnel to the discovery server is up", "server", server)
			c.serve(ctx, mux)
			up.Set(0)
			if ctx.Err() != nil {
				return
			}
			c.cfg.Logger.Warn("Tunnel to the discovery server closed; reconnecting", "server", server)
			if time.Since(start) > stableAfter {
				attempt = 0
			}
		}
		wait := c.retryWait(attempt, err == nil)
		attempt++
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// retryWait is the wait before the next attempt after attempt failed or,
// with lost, after a tunnel closed.
func (c *Client) retryWait(attempt int, lost bool) time.Duration {
	if lost && attempt == 0 {
		return rand.N(reconnectSpread * c.cfg.MinBackoff)
	}
	return backoff(attempt, c.cfg.MinBackoff, c.cfg.MaxBackoff)
}

// backoff is full jitter over an exponentially growing window: after a
// server restart, thousands of agents must not come back in lockstep.
func backoff(attempt int, lo, hi time.Duration) time.Duration {
	window := lo << min(attempt, 30)
	if window <= 0 || window > hi {
		window = hi
	}
	return lo/2 + rand.N(window)
}

// open dials the server and upgrades to a tunnel. Its errors are
// *openError, which say at which step it failed.
func (c *Client) open(ctx context.Context, u *url.URL, tc *tls.Config) (*yamux.Session, error) {
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "443")
	}
	raw, err := c.cfg.Dialer.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, &openError{step: stepConnect, err: err}
	}
	hctx, cancel := context.WithTimeout(ctx, c.cfg.HandshakeTimeout)
	defer cancel()
	bc := &batchingConn{Conn: raw}
	conn := tls.Client(bc, tc)
	if err := conn.HandshakeContext(hctx); err != nil {
		_ = raw.Close()
		return nil, &openError{step: stepHandshake, err: err}
	}
	mux, err := c.upgrade(hctx, conn, bc, u)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return mux, nil
}

// upgrade asks for the tunnel on an established connection and starts the
// session on it.
func (c *Client) upgrade(ctx context.Context, conn *tls.Conn, raw *batchingConn, u *url.URL) (*yamux.Session, error) {
	if d, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(d)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.JoinPath(Path).String(), nil)
	if err != nil {
		return nil, &openError{step: stepUpgrade, err: err}
	}
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Upgrade", Protocol)
	if err := req.Write(conn); err != nil {
		return nil, &openError{step: stepUpgrade, err: fmt.Errorf("send upgrade: %w", err)}
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return nil, &openError{step: stepUpgrade, err: fmt.Errorf("read upgrade reply: %w", err)}
	}
	if resp.StatusCode != http.StatusSwitchingProtocols {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return nil, &openError{step: stepRejected, err: fmt.Errorf("server refused the tunnel: %s: %s", resp.Status, strings.TrimRight(string(body), "\r\n"))}
	}
	if br.Buffered() > 0 {
		// The server speaks yamux only after the agent; nothing may follow
		// the 101 yet.
		return nil, &openError{step: stepUpgrade, err: errors.New("server sent data before the tunnel started")}
	}
	_ = conn.SetDeadline(time.Time{})
	cfg := yamux.DefaultConfig()
	cfg.AcceptBacklog = c.cfg.MaxStreams
	cfg.MaxStreamWindowSize = streamWindow
	cfg.LogOutput = nil
	cfg.Logger = slog.NewLogLogger(c.cfg.Logger.Handler(), slog.LevelDebug)
	mux, err := yamux.Server(&batchedTLS{Conn: conn, raw: raw}, cfg)
	if err != nil {
		return nil, &openError{step: stepUpgrade, err: fmt.Errorf("start tunnel: %w", err)}
	}
	return mux, nil
}

// Steps of opening a tunnel, as openError names them.
const (
	stepConnect   = "connect"
	stepHandshake = "handshake"
	stepUpgrade   = "upgrade"
	stepRejected  = "rejected"
)

// failureReasons label baremetal_sd_agent_tunnel_connect_failures_total:
// refused (nothing listens: the server is down or restarting), the step
// that timed out or failed otherwise, or rejected (the server answered
// with a refusal).
var failureReasons = []string{
	"refused", "connect_timeout", "connect_error", "handshake_timeout", "handshake_error",
	"upgrade_timeout", "upgrade_error", "rejected",
}

// openError is a failed attempt to open a tunnel and the step it failed at.
type openError struct {
	step string
	err  error
}

func (e *openError) Error() string { return e.step + ": " + e.err.Error() }

func (e *openError) Unwrap() error { return e.err }

// reason is the failure's label in the failures metric.
func (e *openError) reason() string {
	var ne net.Error
	switch {
	case e.step == stepRejected:
		return stepRejected
	case e.step == stepConnect && errors.Is(e.err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(e.err, context.DeadlineExceeded) || errors.As(e.err, &ne) && ne.Timeout():
		return e.step + "_timeout"
	}
	return e.step + "_error"
}

// failureReason is the label of a failed attempt's error.
func failureReason(err error) string {
	var oe *openError
	if errors.As(err, &oe) {
		return oe.reason()
	}
	return stepUpgrade + "_error"
}

// serve accepts the server's streams until the tunnel or ctx ends.
func (c *Client) serve(ctx context.Context, mux *yamux.Session) {
	stop := context.AfterFunc(ctx, func() { _ = mux.Close() })
	defer stop()
	defer mux.Close()
	sem := make(chan struct{}, c.cfg.MaxStreams)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		stream, err := mux.Accept()
		if err != nil {
			return
		}
		select {
		case sem <- struct{}{}:
		default:
			c.cfg.Metrics.Refused.Inc()
			_ = stream.Close()
			continue
		}
		c.cfg.Metrics.Streams.Inc()
		wg.Go(func() {
			defer func() { <-sem }()
			c.forward(ctx, stream)
		})
	}
}

// forward hands one stream to the agent's own TLS listener.
func (c *Client) forward(ctx context.Context, stream net.Conn) {
	defer stream.Close()
	local, err := c.local(ctx, stream)
	if err != nil {
		c.cfg.Metrics.Refused.Inc()
		addr := c.cfg.Local
		if c.cfg.Listener != nil {
			addr = c.cfg.Listener.Addr().String()
		}
		c.cfg.Logger.Warn("Cannot reach the agent's own listener for a tunneled scrape", "addr", addr, "err", err)
		return
	}
	defer local.Close()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(local, stream); closeWrite(local); done <- struct{}{} }()
	go func() {
		defer func() { done <- struct{}{} }()
		if mc, ok := local.(*memConn); ok {
			// What the listener wrote goes to the stream from the pipe's
			// own buffer, in writes as large as what gathered there.
			_, _ = mc.WriteTo(stream)
			return
		}
		// Large reads make large yamux frames: fewer frame headers, each
		// a TLS record and a system call of its own, and fewer wake-ups of
		// the session's send loop (7 % less CPU per 30,000-sample scrape,
		// BENCHMARKS.md). The wrapper hides TCPConn.WriteTo, which would
		// copy through its own 32 KiB buffer.
		_, _ = io.CopyBuffer(stream, struct{ io.Reader }{local}, make([]byte, forwardBuffer))
	}()
	<-done
	_ = local.Close()
	_ = stream.Close()
	<-done
}

// local connects to the agent's own listener for stream: in process
// through the Listener, or else over TCP.
func (c *Client) local(ctx context.Context, stream net.Conn) (net.Conn, error) {
	if c.cfg.Listener == nil {
		return c.cfg.Dialer.DialContext(ctx, "tcp", c.cfg.Local)
	}
	// The listener's side sees the server as its peer. A stream waits
	// for a server that stopped accepting without closing the listener
	// no longer than a dial would.
	ours, theirs := memPipe(&c.pipes, stream.RemoteAddr(), c.cfg.Listener.Addr())
	if d := c.cfg.Dialer.Timeout; d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	if err := c.cfg.Listener.hand(ctx, theirs); err != nil {
		return nil, fmt.Errorf("hand the stream to the listener: %w", err)
	}
	return ours, nil
}

// forwardBuffer is the read size from the agent's own listener towards the
// server: at most MaxStreams of them are in use at once.
const forwardBuffer = 256 << 10

func closeWrite(c net.Conn) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}
