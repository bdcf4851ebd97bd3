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
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/tunnel/internal/mux"
)

// Path is where agents open their tunnel, with an HTTP/1.1 Upgrade to
// Protocol.
const (
	Path     = "/api/v1/tunnel"
	Protocol = "baremetal_sd-tunnel/1"
)

// Defaults of ServerConfig.
const (
	DefaultMaxTunnels         = 200000
	DefaultMaxStreamsPerAgent = 16
	DefaultConnectTimeout     = 10 * time.Second
	DefaultIdleTimeout        = 2 * time.Minute
	// sweepInterval is how often the server looks whether the registry
	// changed, to close the tunnels of agents revoked meanwhile.
	sweepInterval = 250 * time.Millisecond
)

// refusalReasons label baremetal_sd_tunnel_refusals_total.
var refusalReasons = []string{
	"no_certificate", "wrong_issuer", "not_agent", "not_scraper", "agent_refused", "not_tunneled",
	"bad_request", "bad_target", "unknown_target", "ambiguous_target", "port_refused", "revoked",
	"too_many_tunnels", "too_many_streams", "agent_unreachable",
}

// Agent is what the server needs to know about an agent.
type Agent struct {
	ID       string
	Hostname string
	Port     int
	// Listed says the agent is registered and in http_sd: not revoked,
	// expired or deregistered.
	Listed bool
	// Tunnel says the agent registered to be scraped through tunnels.
	Tunnel bool
}

// Directory is the server's view of the registry.
type Directory interface {
	// Agent returns the agent with id, if the registry knows it.
	Agent(id string) (Agent, bool)
	// CheckCertificate says whether the certificate with serial (hex) may
	// act for agent id.
	CheckCertificate(id, serial string) error
	// Generation changes whenever an agent may have changed.
	Generation() uint64
}

// ServerConfig configures the server half.
type ServerConfig struct {
	Authority *ca.Authority
	Directory Directory
	// MaxTunnels bounds the tunnels of this server, MaxStreamsPerAgent the
	// CONNECT streams open to one agent at a time.
	MaxTunnels         int
	MaxStreamsPerAgent int
	// ConnectTimeout bounds opening a stream to the agent; IdleTimeout
	// closes a stream that moved no byte either way for that long.
	ConnectTimeout time.Duration
	IdleTimeout    time.Duration
	Metrics        *ServerMetrics
	Logger         *slog.Logger
}

// Server is the server half: agents' tunnels in, CONNECT requests out.
type Server struct {
	cfg ServerConfig

	// mux configures every tunnel's session, and holds the buffers their
	// streams share.
	mux *mux.Config

	mu       sync.Mutex
	sessions map[string]*session   // by agent id
	byHost   map[string][]*session // by lower-case hostname
	closed   bool
}

// session is one agent's tunnel.
type session struct {
	agent   Agent
	mux     *mux.Session
	streams atomic.Int32
}

// NewServer returns the server half; Run closes tunnels of agents that
// lose their right to one.
func NewServer(cfg ServerConfig) *Server {
	if cfg.MaxTunnels <= 0 {
		cfg.MaxTunnels = DefaultMaxTunnels
	}
	if cfg.MaxStreamsPerAgent <= 0 {
		cfg.MaxStreamsPerAgent = DefaultMaxStreamsPerAgent
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = DefaultConnectTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = DefaultIdleTimeout
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewServerMetrics(nil)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, sessions: map[string]*session{}, byHost: map[string][]*session{}}
	s.mux = s.muxConfig()
	return s
}

// Wrap sends CONNECT requests to the proxy and everything else to next.
// CONNECT needs its own branch: ServeMux patterns match paths, and a
// CONNECT request has none.
func (s *Server) Wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodConnect {
			s.ServeConnect(w, r)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// Run closes the tunnels of agents that are revoked, expire, deregister
// or stop asking for tunnels, on this replica or any other, until ctx
// ends; then it closes every tunnel.
func (s *Server) Run(ctx context.Context) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	var gen uint64
	for {
		select {
		case <-ctx.Done():
			s.closeAll()
			return
		case <-t.C:
		}
		s.reap()
		if g := s.cfg.Directory.Generation(); g != gen {
			gen = g
			s.sweep()
		}
	}
}

// reap forgets closed tunnels. Polling costs less than a goroutine per
// tunnel waiting for its end.
func (s *Server) reap() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sess := range s.sessions {
		if sess.mux.IsClosed() {
			delete(s.sessions, sess.agent.ID)
			s.unindex(sess)
		}
	}
	s.cfg.Metrics.Tunnels.Set(float64(len(s.sessions)))
}

// sweep closes the tunnels whose agent may no longer hold one.
func (s *Server) sweep() {
	s.mu.Lock()
	var drop []*session
	for _, sess := range s.sessions {
		if _, err := s.allowed(sess.agent.ID); err != nil {
			drop = append(drop, sess)
		}
	}
	s.mu.Unlock()
	for _, sess := range drop {
		s.cfg.Logger.Info("Closing the tunnel of an agent that may no longer hold one", "agent_id", sess.agent.ID)
		_ = sess.mux.Close()
	}
}

func (s *Server) closeAll() {
	s.mu.Lock()
	s.closed = true
	all := make([]*session, 0, len(s.sessions))
	for _, sess := range s.sessions {
		all = append(all, sess)
	}
	s.mu.Unlock()
	for _, sess := range all {
		_ = sess.mux.Close()
	}
}

// allowed returns the agent if it may hold a tunnel now.
func (s *Server) allowed(id string) (Agent, error) {
	a, ok := s.cfg.Directory.Agent(id)
	switch {
	case !ok || !a.Listed:
		return a, errors.New("agent is not registered, or is revoked or expired")
	case !a.Tunnel:
		return a, errors.New("agent did not register for tunnels")
	}
	return a, nil
}

// refuse answers a refused request and counts the reason.
func (s *Server) refuse(w http.ResponseWriter, status int, reason, msg string) {
	s.cfg.Metrics.Refusals.WithLabelValues(reason).Inc()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, msg+"\n")
}

// peer is who sent a request: its verified client certificate, the role
// and id in it.
type peer struct {
	leaf *x509.Certificate
	role ca.Role
	id   string
}

// refusal is a refused request's status, counted reason and message.
type refusal struct {
	status      int
	reason, msg string
}

// identify returns the request's verified client certificate and its role.
func (s *Server) identify(r *http.Request) (peer, *refusal) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		return peer{}, &refusal{http.StatusUnauthorized, "no_certificate", "a client certificate is required"}
	}
	c, err := s.cfg.Authority.VerifiedClient(r.TLS.VerifiedChains)
	if err != nil {
		if status := ca.ClientRefusalStatus(err); status == http.StatusForbidden {
			return peer{}, &refusal{status, "wrong_issuer", err.Error()}
		}
		return peer{}, &refusal{http.StatusUnauthorized, "no_certificate", "client certificate not verified against the baremetal_sd CAs"}
	}
	return peer{leaf: c.Leaf, role: c.Role, id: c.ID}, nil
}

// ServeTunnel takes an agent's tunnel: GET Path with Upgrade: Protocol,
// over HTTP/1.1 and the agent's certificate.
func (s *Server) ServeTunnel(w http.ResponseWriter, r *http.Request) {
	p, no := s.identify(r)
	if no != nil {
		s.refuse(w, no.status, no.reason, no.msg)
		return
	}
	if p.role != ca.RoleAgent {
		s.refuse(w, http.StatusForbidden, "not_agent", fmt.Sprintf("a certificate of role %q cannot open a tunnel", p.role))
		return
	}
	id := p.id
	if err := s.cfg.Directory.CheckCertificate(id, p.leaf.SerialNumber.Text(16)); err != nil {
		s.refuse(w, http.StatusForbidden, "agent_refused", "agent certificate refused: "+err.Error())
		return
	}
	agent, err := s.allowed(id)
	if err != nil {
		s.refuse(w, http.StatusForbidden, "not_tunneled", err.Error()+": register with tunnel on first")
		return
	}
	if r.ProtoMajor != 1 || !headerHas(r.Header, "Connection", "upgrade") || r.Header.Get("Upgrade") != Protocol {
		s.refuse(w, http.StatusUpgradeRequired, "bad_request", "a tunnel is an HTTP/1.1 upgrade to "+Protocol)
		return
	}
	s.mu.Lock()
	full := len(s.sessions) >= s.cfg.MaxTunnels || s.closed
	s.mu.Unlock()
	if full {
		s.refuse(w, http.StatusServiceUnavailable, "too_many_tunnels", "this server holds as many tunnels as it may")
		return
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		s.refuse(w, http.StatusInternalServerError, "bad_request", "cannot take over the connection")
		return
	}
	// The server's read and write timeouts apply to requests, not to a
	// tunnel that lives for days: the agent's pings and TCP keepalive
	// find dead peers, and the session bounds each write.
	_ = conn.SetDeadline(time.Time{})
	if rw.Reader.Buffered() > 0 {
		// The agent speaks only after the 101.
		s.cfg.Metrics.Refusals.WithLabelValues("bad_request").Inc()
		_ = conn.Close()
		return
	}
	if _, err := io.WriteString(conn, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "+Protocol+"\r\n\r\n"); err != nil {
		_ = conn.Close()
		return
	}
	s.add(&session{agent: agent, mux: mux.NewSession(conn, s.mux)})
	s.cfg.Logger.Debug("Agent tunnel connected", "agent_id", id, "hostname", agent.Hostname)
}

// muxConfig configures the sessions. The agent pings; the server only
// answers: a goroutine and a timer per tunnel less matters at 100,000
// tunnels, and a dead agent's connection still ends by TCP keepalive.
func (s *Server) muxConfig() *mux.Config {
	errs := s.cfg.Metrics.ProtocolErrors
	return &mux.Config{
		Window: streamWindow,
		// A stream the agent does not acknowledge within the connect
		// timeout is reset, and so is one it does not close that long
		// after the server did.
		OpenTimeout:  s.cfg.ConnectTimeout,
		CloseTimeout: s.cfg.ConnectTimeout,
		WriteTimeout: s.cfg.ConnectTimeout,
		Logger:       s.cfg.Logger,
		Violation:    func(reason string) { errs.WithLabelValues(reason).Inc() },
	}
}

// add installs a tunnel, replacing an older one of the same agent.
func (s *Server) add(sess *session) {
	s.mu.Lock()
	old := s.sessions[sess.agent.ID]
	if old != nil {
		s.unindex(old)
	}
	s.sessions[sess.agent.ID] = sess
	host := strings.ToLower(sess.agent.Hostname)
	s.byHost[host] = append(s.byHost[host], sess)
	s.cfg.Metrics.Tunnels.Set(float64(len(s.sessions)))
	s.mu.Unlock()
	if old != nil {
		_ = old.mux.Close()
	}
}

func (s *Server) unindex(sess *session) {
	host := strings.ToLower(sess.agent.Hostname)
	list := s.byHost[host]
	for i, x := range list {
		if x == sess {
			list = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(s.byHost, host)
	} else {
		s.byHost[host] = list
	}
}

// Tunnels returns how many tunnels the server holds.
func (s *Server) Tunnels() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.sessions)
}

// ServeConnect proxies one CONNECT request of a scraper to the relay of a
// tunneled agent, and refuses every other.
func (s *Server) ServeConnect(w http.ResponseWriter, r *http.Request) {
	if r.ProtoMajor != 1 {
		// Prometheus sends CONNECT as HTTP/1.1 only; its jobs need
		// enable_http2: false (docs/tunnels.md).
		s.refuse(w, http.StatusHTTPVersionNotSupported, "bad_request", "CONNECT over HTTP/2 is not supported: set enable_http2: false on the job")
		return
	}
	p, no := s.identify(r)
	if no != nil {
		s.refuse(w, no.status, no.reason, no.msg)
		return
	}
	if p.role != ca.RoleDiscovery && p.role != ca.RoleAdmin {
		s.refuse(w, http.StatusForbidden, "not_scraper", fmt.Sprintf("a certificate of role %q may not scrape through tunnels: discovery or admin only", p.role))
		return
	}
	target, err := ParseTarget(r.Host)
	if err != nil {
		s.refuse(w, http.StatusBadRequest, "bad_target", err.Error())
		return
	}
	s.mu.Lock()
	list := s.byHost[target.Host]
	var sess *session
	if len(list) == 1 {
		sess = list[0]
	}
	s.mu.Unlock()
	switch {
	case len(list) == 0:
		s.refuse(w, http.StatusNotFound, "unknown_target", fmt.Sprintf("no agent named %q holds a tunnel to this server", target.Host))
		return
	case sess == nil:
		s.refuse(w, http.StatusConflict, "ambiguous_target", fmt.Sprintf("several agents named %q hold tunnels: refusing to choose", target.Host))
		return
	case target.Port != sess.agent.Port:
		s.refuse(w, http.StatusForbidden, "port_refused", fmt.Sprintf("only the agent's relay port %d is reachable through its tunnel", sess.agent.Port))
		return
	}
	if _, err := s.allowed(sess.agent.ID); err != nil {
		_ = sess.mux.Close()
		s.refuse(w, http.StatusNotFound, "revoked", err.Error())
		return
	}
	if n := sess.streams.Add(1); int(n) > s.cfg.MaxStreamsPerAgent {
		sess.streams.Add(-1)
		s.refuse(w, http.StatusTooManyRequests, "too_many_streams", fmt.Sprintf("the agent has %d streams open, the limit", s.cfg.MaxStreamsPerAgent))
		return
	}
	defer sess.streams.Add(-1)
	stream, err := sess.mux.Open()
	if err != nil {
		s.refuse(w, http.StatusBadGateway, "agent_unreachable", "cannot open a stream to the agent")
		return
	}
	defer stream.Close()
	s.cfg.Metrics.Opened.Inc()
	s.cfg.Metrics.Streams.Inc()
	defer s.cfg.Metrics.Streams.Dec()

	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Time{})
	if _, err := io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n"); err != nil {
		return
	}
	// Bytes the client sent after the request line belong to the stream.
	var in io.Reader = conn
	if n := rw.Reader.Buffered(); n > 0 {
		buffered, _ := rw.Peek(n)
		in = io.MultiReader(bytes.NewReader(bytes.Clone(buffered)), conn)
	}
	s.pipe(conn, in, conn, stream, conn)
}

// pipe copies client to stream and stream to client until both ends are
// done or no byte moved for IdleTimeout. conn, when set, is the client's
// connection, whose deadline enforces the idle timeout on its side;
// client is closed to end the client's side.
func (s *Server) pipe(conn net.Conn, in io.Reader, out io.Writer, stream net.Conn, client io.Closer) {
	var last atomic.Int64
	touch := func() { last.Store(time.Now().UnixNano()) }
	touch()
	idle := s.cfg.IdleTimeout
	done := make(chan struct{}, 2)
	toAgent := s.cfg.Metrics.Bytes.WithLabelValues("to_agent")
	fromAgent := s.cfg.Metrics.Bytes.WithLabelValues("from_agent")
	// deadline lets a blocked read wait as long as the other direction
	// keeps moving.
	deadline := func(c net.Conn) bool {
		if c == nil {
			return true
		}
		quiet := time.Since(time.Unix(0, last.Load()))
		if quiet >= idle {
			return false
		}
		_ = c.SetReadDeadline(time.Now().Add(idle - quiet))
		return true
	}
	cp := func(dst io.Writer, src io.Reader, srcConn net.Conn, count func(float64)) {
		defer func() { done <- struct{}{} }()
		buf := make([]byte, 32<<10)
		for {
			if !deadline(srcConn) {
				return
			}
			n, err := src.Read(buf)
			if n > 0 {
				touch()
				count(float64(n))
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				var ne net.Error
				if errors.As(err, &ne) && ne.Timeout() {
					continue // deadline decides
				}
				return
			}
		}
	}
	go cp(stream, in, conn, toAgent.Add)
	go cp(out, stream, stream, fromAgent.Add)
	<-done
	// One direction ended: close both so the other read returns.
	_ = stream.Close()
	_ = client.Close()
	<-done
}

// headerHas reports whether a comma-separated header lists token.
func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for len(v) > 0 {
			var part string
			part, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(part), token) {
				return true
			}
		}
	}
	return false
}

// streamWindow is the flow control window of one stream, in each
// direction: how much one scrape may have in flight before its reader
// takes it. It bounds the memory a slow scraper can pin per stream (at
// most MaxStreamsPerAgent windows per tunnel) and keeps one scrape from
// starving another on the same tunnel; yamux' initial 256 KiB costs a
// round trip every 256 KiB of a large scrape.
const streamWindow = 1 << 20
