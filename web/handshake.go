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

package web

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"
)

// WithHandshakeLimit bounds the TLS handshakes the server computes at once
// to n; the others wait, after their ClientHello, until one finishes or
// their handshake times out. Without a bound, thousands of clients that
// connect at once (agents reconnecting after a restart) all progress
// together, slower than any of them waits, and most time out after the
// server spent its CPU on them. Waiting starts only once the ClientHello
// arrived, so that a client that connects and says nothing holds no place.
func WithHandshakeLimit(n int) ServeOption {
	return func(o *serveOptions) { o.handshakes = n }
}

// handshakeListener returns connections whose TLS handshake is complete,
// computing at most cap(permits) handshakes at a time. net/http would
// start every handshake as soon as it accepts the connection.
type handshakeListener struct {
	net.Listener
	config  *tls.Config
	timeout time.Duration
	permits chan struct{}
	logger  *slog.Logger

	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
	errMu     sync.Mutex
	err       error
}

// heldKey marks a handshake's context: the *bool under it says whether the
// handshake holds a permit.
type heldKey struct{}

// newHandshakeListener serves config's handshakes on l, at most limit at a
// time, each within timeout of its accept.
func newHandshakeListener(l net.Listener, config *tls.Config, limit int, timeout time.Duration, logger *slog.Logger) *handshakeListener {
	hl := &handshakeListener{
		Listener: l,
		timeout:  timeout,
		permits:  make(chan struct{}, limit),
		logger:   logger,
		conns:    make(chan net.Conn),
		closed:   make(chan struct{}),
	}
	hl.config = config.Clone()
	next := config.GetConfigForClient
	hl.config.GetConfigForClient = func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
		if held, ok := hello.Context().Value(heldKey{}).(*bool); ok && !*held {
			wait := time.NewTimer(handshakeQueueTimeout)
			select {
			case hl.permits <- struct{}{}:
				wait.Stop()
				*held = true
			case <-wait.C:
				return nil, errors.New("server busy: no handshake slot within " + handshakeQueueTimeout.String())
			case <-hello.Context().Done():
				wait.Stop()
				return nil, hello.Context().Err()
			}
			// The wait is over; the handshake itself has timeout.
			_ = hello.Conn.SetDeadline(time.Now().Add(hl.timeout))
		}
		if next == nil {
			return nil, nil
		}
		return next(hello)
	}
	go hl.run()
	return hl
}

// run accepts connections and starts their handshakes until the listener
// is closed or fails.
func (l *handshakeListener) run() {
	var delay time.Duration
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || isTemporary(err) {
				// As net/http: out of file descriptors and the like pass.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				l.logger.Error("Accept failed; retrying", "err", err, "delay", delay)
				select {
				case <-time.After(delay):
					continue
				case <-l.closed:
					return
				}
			}
			l.fail(err)
			return
		}
		delay = 0
		go l.handshake(c)
	}
}

func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// handshake completes c's handshake and hands it to Accept.
func (l *handshakeListener) handshake(c net.Conn) {
	tc := tls.Server(c, l.config)
	// The ClientHello must come within timeout; then the connection may
	// wait for a permit up to handshakeQueueTimeout, and has timeout again
	// for the rest of the handshake.
	_ = c.SetDeadline(time.Now().Add(l.timeout))
	ctx, cancel := context.WithTimeout(context.Background(), l.timeout+handshakeQueueTimeout+l.timeout)
	held := false
	err := tc.HandshakeContext(context.WithValue(ctx, heldKey{}, &held))
	cancel()
	if err != nil {
		// Closed before the permit goes: the next handshake starts on a
		// server that let this one go.
		_ = c.Close()
	}
	if held {
		<-l.permits
	}
	if err != nil {
		l.logger.Debug("TLS handshake failed", "remote", c.RemoteAddr().String(), "err", err)
		return
	}
	// The server sets its own deadlines per request, and net/http clears
	// those of its handshake only when it has timeouts.
	_ = c.SetDeadline(time.Time{})
	select {
	case l.conns <- tc:
	case <-l.closed:
		_ = tc.Close()
	}
}

// Accept returns the next connection whose handshake completed.
func (l *handshakeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		l.errMu.Lock()
		defer l.errMu.Unlock()
		return nil, l.err
	}
}

func (l *handshakeListener) fail(err error) {
	l.closeOnce.Do(func() {
		l.errMu.Lock()
		l.err = err
		l.errMu.Unlock()
		close(l.closed)
	})
}

// Close stops accepting; handshakes in progress end with their connection.
func (l *handshakeListener) Close() error {
	l.fail(net.ErrClosed)
	return l.Listener.Close()
}

// handshakeQueueTimeout is how long a connection may wait for a handshake
// permit after its ClientHello. Waiting costs the server a parked
// goroutine and no CPU; a client turned away must start over, and one that
// gave up while it waited costs the server a handshake for nothing. Agents
// wait longer than this for the server's answer (tunnel.Client).
const handshakeQueueTimeout = 30 * time.Second

// handshakeTimeout is the handshake deadline net/http would set: the
// shortest of the server's read and write timeouts.
func handshakeTimeout(s *http.Server) time.Duration {
	var d time.Duration
	for _, t := range []time.Duration{s.ReadHeaderTimeout, s.ReadTimeout, s.WriteTimeout} {
		if t > 0 && (d == 0 || t < d) {
			d = t
		}
	}
	if d == 0 {
		// net/http would wait forever; a client that never finishes its
		// handshake must not hold a connection forever here.
		d = time.Minute
	}
	return d
}
