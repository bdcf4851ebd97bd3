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
	"context"
	"errors"
	"net"
	"sync"
)

// Listener is the agent's own listener with the tunnel's streams added:
// Accept returns the connections of the listener it wraps and, as
// connections in process, the scrapes that came through the tunnels. The
// agent's HTTP server serves both alike, with the same TLS configuration
// and client verification, so the scraper's TLS session still ends there;
// but a tunneled scrape no longer crosses a loopback TCP connection, which
// cost two system calls per TLS record of the response (BENCHMARKS.md).
type Listener struct {
	net.Listener

	accepted chan acceptResult
	streams  chan net.Conn
	done     chan struct{}
	once     sync.Once
	start    sync.Once
}

type acceptResult struct {
	conn net.Conn
	err  error
}

// NewListener wraps l, which the agent's HTTP server then serves through
// the Listener.
func NewListener(l net.Listener) *Listener {
	return &Listener{
		Listener: l,
		accepted: make(chan acceptResult),
		streams:  make(chan net.Conn),
		done:     make(chan struct{}),
	}
}

// Accept waits for the next connection, from the wrapped listener or a
// tunnel.
func (l *Listener) Accept() (net.Conn, error) {
	l.start.Do(func() { go l.acceptLoop() })
	select {
	case r := <-l.accepted:
		return r.conn, r.err
	case c := <-l.streams:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// acceptLoop takes the wrapped listener's connections until it fails for
// good or the Listener is closed.
func (l *Listener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		select {
		case l.accepted <- acceptResult{c, err}:
		case <-l.done:
			if c != nil {
				_ = c.Close()
			}
			return
		}
		if err != nil && !isTemporary(err) {
			return
		}
	}
}

// isTemporary says whether net/http retries Accept after err, as it does
// after running out of file descriptors.
func isTemporary(err error) bool {
	var t interface{ Temporary() bool }
	return errors.As(err, &t) && t.Temporary()
}

// Close closes the wrapped listener and takes no more streams.
func (l *Listener) Close() error {
	l.once.Do(func() { close(l.done) })
	return l.Listener.Close()
}

// hand gives c to the server behind the Listener.
func (l *Listener) hand(ctx context.Context, c net.Conn) error {
	select {
	case l.streams <- c:
		return nil
	case <-l.done:
		return net.ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}
