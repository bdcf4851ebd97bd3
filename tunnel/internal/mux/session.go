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

package mux

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baremetal-sd/baremetal_sd/internal/bufpool"
)

// Reasons of Config.Violation. All but ReasonPeerOpened end the session.
const (
	// ReasonVersion: a frame of a version other than 0.
	ReasonVersion = "bad_version"
	// ReasonType: a frame of an unknown type.
	ReasonType = "bad_type"
	// ReasonStreamID: a stream frame for stream 0, a ping or GoAway for
	// another, or a stream opened by the peer with an id that is the
	// session's or not above the last one.
	ReasonStreamID = "bad_stream_id"
	// ReasonUnknownStream: a frame for a stream nobody opened.
	ReasonUnknownStream = "unknown_stream"
	// ReasonWindow: more data than the stream's window allowed.
	ReasonWindow = "window_exceeded"
	// ReasonWindowOverflow: window updates beyond 4 GiB.
	ReasonWindowOverflow = "window_overflow"
	// ReasonFlags: a second FIN on a stream.
	ReasonFlags = "bad_flags"
	// ReasonPeerOpened: the peer opened a stream; it is reset and the
	// session goes on.
	ReasonPeerOpened = "peer_opened_stream"
)

// Reasons lists the reasons Config.Violation is called with.
func Reasons() []string {
	return []string{ReasonVersion, ReasonType, ReasonStreamID, ReasonUnknownStream, ReasonWindow, ReasonWindowOverflow, ReasonFlags, ReasonPeerOpened}
}

// Errors of sessions and streams.
var (
	// ErrSessionClosed: the session ended, closed here or by the peer.
	ErrSessionClosed = errors.New("tunnel session closed")
	// ErrGoneAway: the peer sent GoAway; no stream can be opened.
	ErrGoneAway = errors.New("the peer takes no new streams")
	// ErrReset: the stream was reset, by the peer or because it timed out.
	ErrReset = errors.New("stream reset")
)

// chunkSize is the unit of a stream's receive buffer and the largest frame
// written: header and body make one TLS record of at most 16 KiB.
const chunkSize = 16 << 10

// maxBody is the largest data frame body the session writes.
const maxBody = chunkSize - headerLen

// Config configures sessions. One Config serves many sessions and must not
// be changed once in use.
type Config struct {
	// Window is each stream's receive window, advertised when a stream
	// opens; less than 256 KiB, yamux' initial window, counts as 256 KiB.
	Window uint32
	// OpenTimeout: a stream the peer did not acknowledge that long after
	// it was opened is reset. Zero: 10 s.
	OpenTimeout time.Duration
	// CloseTimeout: a stream closed here and not by the peer that long
	// after is reset and forgotten. Zero: 10 s.
	CloseTimeout time.Duration
	// WriteTimeout bounds each write to the connection. A write that
	// times out ends the session: a TLS connection cannot be written to
	// after a timeout. Zero: 10 s.
	WriteTimeout time.Duration
	// Logger gets debug lines on protocol violations; nil discards them.
	Logger *slog.Logger
	// Violation, if set, is called for each protocol violation of a peer,
	// with one of Reasons.
	Violation func(reason string)

	chunks bufpool.Pool
}

const defaultTimeout = 10 * time.Second

func (c *Config) window() uint32 { return max(c.Window, initialWindow) }

func orDefault(d time.Duration) time.Duration {
	if d <= 0 {
		return defaultTimeout
	}
	return d
}

func (c *Config) logger() *slog.Logger {
	if c.Logger == nil {
		return slog.New(slog.DiscardHandler)
	}
	return c.Logger
}

// chunk returns an empty buffer of chunkSize capacity.
func (c *Config) chunk() *[]byte { return c.chunks.Get(chunkSize) }

func (c *Config) release(p *[]byte) { c.chunks.Put(p) }

// violation is a protocol error of the peer, which ends the session.
type violation struct {
	reason string
	detail string
}

func (v *violation) Error() string {
	return fmt.Sprintf("protocol violation by the peer (%s): %s", v.reason, v.detail)
}

func violated(reason, format string, args ...any) error {
	return &violation{reason: reason, detail: fmt.Sprintf(format, args...)}
}

// Session is the server's end of a yamux session: it opens streams to the
// peer and accepts none.
type Session struct {
	conn net.Conn
	cfg  *Config

	// done is closed when the session has ended; over is set as well when
	// the peer sent GoAway, after which no stream opens.
	done chan struct{}
	over atomic.Bool

	wmu  sync.Mutex // held for writing one frame
	whdr header
	werr error

	mu       sync.Mutex
	streams  map[uint32]*Stream // nil while none is open
	nextID   uint32             // odd, as yamux clients' are
	peerLast uint32             // the last stream id the peer opened
	goneAway bool
	closed   bool
	err      error

	rhdr header // the read loop's
}

// NewSession starts a session on conn, which it owns from then on, and
// its one goroutine, which reads frames until the session ends.
func NewSession(conn net.Conn, cfg *Config) *Session {
	s := &Session{conn: conn, cfg: cfg, done: make(chan struct{}), nextID: 1}
	go s.readLoop()
	return s
}

// IsClosed reports whether the session ended or takes no new streams.
func (s *Session) IsClosed() bool { return s.over.Load() }

// Done is closed when the session has ended.
func (s *Session) Done() <-chan struct{} { return s.done }

// Err says why the session ended; nil while it runs.
func (s *Session) Err() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.err
}

// Close ends the session and every stream, and closes the connection.
func (s *Session) Close() error {
	s.end(ErrSessionClosed)
	return nil
}

// Open opens a stream to the peer. It does not wait for the peer's
// acknowledgement: data may follow at once, and a stream the peer does not
// acknowledge within Config.OpenTimeout is reset.
func (s *Session) Open() (*Stream, error) {
	s.mu.Lock()
	switch {
	case s.closed:
		s.mu.Unlock()
		return nil, ErrSessionClosed
	case s.goneAway:
		s.mu.Unlock()
		return nil, ErrGoneAway
	case s.nextID >= math.MaxUint32-1:
		s.mu.Unlock()
		return nil, errors.New("stream ids exhausted")
	}
	st := &Stream{s: s, id: s.nextID, sendWindow: initialWindow, recvWindow: s.cfg.window()}
	st.cond.L = &st.mu
	s.nextID += 2
	if s.streams == nil {
		s.streams = make(map[uint32]*Stream)
	}
	s.streams[st.id] = st
	st.mu.Lock()
	st.timer = time.AfterFunc(orDefault(s.cfg.OpenTimeout), st.expire)
	st.mu.Unlock()
	s.mu.Unlock()
	// The SYN carries the window beyond the initial one, as yamux'
	// clients send it.
	if err := s.writeFrame(typeWindowUpd, flagSYN, st.id, s.cfg.window()-initialWindow, nil); err != nil {
		st.finish()
		return nil, err
	}
	return st, nil
}

// end ends the session for err, once.
func (s *Session) end(err error) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	s.err = err
	streams := s.streams
	s.streams = nil
	s.mu.Unlock()
	// Counted before Done closes, so that whoever sees the end sees why.
	var v *violation
	isViolation := errors.As(err, &v)
	if isViolation {
		s.cfg.logger().Debug("Closing a tunnel session on a protocol violation", "reason", v.reason, "err", err, "addr", s.conn.RemoteAddr())
		if s.cfg.Violation != nil {
			s.cfg.Violation(v.reason)
		}
	}
	s.over.Store(true)
	close(s.done)
	if isViolation {
		// Tell the peer why, unless a write is in the way: the session
		// is over either way.
		if s.wmu.TryLock() {
			if s.werr == nil {
				_ = s.conn.SetWriteDeadline(time.Now().Add(time.Second))
				s.whdr.encode(typeGoAway, 0, 0, goAwayProtocolError)
				_, _ = s.conn.Write(s.whdr[:])
			}
			s.wmu.Unlock()
		}
	}
	_ = s.conn.Close()
	for _, st := range streams {
		st.sessionEnded()
	}
}

// forget removes a finished stream; the last one of a session the peer
// sent GoAway on ends it.
func (s *Session) forget(id uint32) {
	s.mu.Lock()
	delete(s.streams, id)
	last := len(s.streams) == 0
	if last {
		s.streams = nil // a map does not shrink
	}
	gone := last && s.goneAway
	s.mu.Unlock()
	if gone {
		s.end(ErrGoneAway)
	}
}

// writeFrame writes one frame; a body is at most maxBody long. A write
// error ends the session.
func (s *Session) writeFrame(typ uint8, flags uint16, id, length uint32, body []byte) error {
	s.wmu.Lock()
	err := s.writeLocked(typ, flags, id, length, body)
	s.wmu.Unlock()
	if errors.Is(err, errBroken) {
		s.end(err)
	}
	return err
}

// writeData writes a data frame of st unless st was closed or reset: the
// check under the write lock keeps data from following the stream's FIN
// or RST.
func (s *Session) writeData(st *Stream, body []byte) error {
	s.wmu.Lock()
	err := st.writeErr(false)
	if err == nil {
		err = s.writeLocked(typeData, 0, st.id, uint32(len(body)), body)
	}
	s.wmu.Unlock()
	if errors.Is(err, errBroken) {
		s.end(err)
	}
	return err
}

func (s *Session) writeLocked(typ uint8, flags uint16, id, length uint32, body []byte) error {
	if s.werr != nil {
		return s.werr
	}
	select {
	case <-s.done:
		return ErrSessionClosed
	default:
	}
	_ = s.conn.SetWriteDeadline(time.Now().Add(orDefault(s.cfg.WriteTimeout)))
	var err error
	if len(body) == 0 {
		s.whdr.encode(typ, flags, id, length)
		_, err = s.conn.Write(s.whdr[:])
	} else {
		// Header and body in one write: one TLS record, one system call.
		p := s.cfg.chunk()
		b := (*p)[:headerLen+len(body)]
		(*header)(b[:headerLen]).encode(typ, flags, id, length)
		copy(b[headerLen:], body)
		_, err = s.conn.Write(b)
		s.cfg.release(p)
	}
	if err != nil {
		s.werr = fmt.Errorf("%w: %w", errBroken, err)
		return s.werr
	}
	return nil
}

// errBroken wraps the error of a write to the connection, after which
// the session cannot go on.
var errBroken = errors.New("write to the tunnel")

func (s *Session) readLoop() {
	for {
		if _, err := io.ReadFull(s.conn, s.rhdr[:]); err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) {
				err = ErrSessionClosed
			} else {
				err = fmt.Errorf("read from the tunnel: %w", err)
			}
			s.end(err)
			return
		}
		if err := s.handle(&s.rhdr); err != nil {
			s.end(err)
			return
		}
	}
}

// handle acts on one frame whose header h was just read; it reads the
// frame's body, if any.
func (s *Session) handle(h *header) error {
	if v := h.version(); v != protoVersion {
		return violated(ReasonVersion, "frame of version %d", v)
	}
	switch h.typ() {
	case typeData, typeWindowUpd:
		return s.handleStream(h)
	case typePing:
		if h.stream() != 0 {
			return violated(ReasonStreamID, "ping on stream %d", h.stream())
		}
		// The peer's keepalive. The session sends no pings of its own,
		// so an answer to one is ignored.
		if h.flags()&flagSYN != 0 {
			return s.writeFrame(typePing, flagACK, 0, h.length(), nil)
		}
		return nil
	case typeGoAway:
		if h.stream() != 0 {
			return violated(ReasonStreamID, "GoAway on stream %d", h.stream())
		}
		// The session only opens streams: one that may open none is of
		// no use once its streams are done.
		s.cfg.logger().Debug("Tunnel peer sent GoAway", "code", h.length(), "addr", s.conn.RemoteAddr())
		s.over.Store(true)
		s.mu.Lock()
		s.goneAway = true
		none := len(s.streams) == 0
		s.mu.Unlock()
		if none {
			return ErrGoneAway
		}
		return nil
	default:
		return violated(ReasonType, "frame of type %d", h.typ())
	}
}

func (s *Session) handleStream(h *header) error {
	id, flags := h.stream(), h.flags()
	if id == 0 {
		return violated(ReasonStreamID, "%s", h)
	}
	s.mu.Lock()
	st := s.streams[id]
	next, peerLast := s.nextID, s.peerLast
	s.mu.Unlock()
	if flags&flagSYN != 0 {
		return s.refuseOpen(h)
	}
	if st != nil {
		return st.frame(h)
	}
	// A frame for a stream that is gone: one the session forgot (reset,
	// closed, timed out) or the peer opened and was refused may still
	// have frames on the way. Anything else was never opened.
	switch {
	case id%2 == 1 && id < next:
		return s.discard(h, s.cfg.window())
	case id%2 == 0 && id <= peerLast:
		return s.discard(h, initialWindow)
	}
	return violated(ReasonUnknownStream, "%s", h)
}

// refuseOpen resets a stream the peer opened: the server is never opened
// into.
func (s *Session) refuseOpen(h *header) error {
	id := h.stream()
	s.mu.Lock()
	ok := id%2 == 0 && id > s.peerLast
	if ok {
		s.peerLast = id
	}
	s.mu.Unlock()
	if !ok {
		return violated(ReasonStreamID, "the peer opened stream %d: %s", id, h)
	}
	s.cfg.logger().Debug("Refusing a stream the tunnel peer opened", "stream", id, "addr", s.conn.RemoteAddr())
	if s.cfg.Violation != nil {
		s.cfg.Violation(ReasonPeerOpened)
	}
	if err := s.writeFrame(typeWindowUpd, flagRST, id, 0, nil); err != nil {
		return err
	}
	return s.discard(h, initialWindow)
}

// discard reads and drops the body of a data frame for a stream that is
// gone, which may carry at most window bytes.
func (s *Session) discard(h *header, window uint32) error {
	if h.typ() != typeData || h.length() == 0 {
		return nil
	}
	if h.length() > window {
		return violated(ReasonWindow, "%d bytes for stream %d, whose window is at most %d", h.length(), h.stream(), window)
	}
	return s.skip(int(h.length()))
}

// skip reads and drops n bytes of the connection.
func (s *Session) skip(n int) error {
	p := s.cfg.chunk()
	defer s.cfg.release(p)
	for n > 0 {
		m := min(n, chunkSize)
		if _, err := io.ReadFull(s.conn, (*p)[:m]); err != nil {
			return fmt.Errorf("read from the tunnel: %w", err)
		}
		n -= m
	}
	return nil
}
