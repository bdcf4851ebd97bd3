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

package e2e

import (
	"context"
	"errors"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// The kernel here has no netem, so the chaos harness degrades an agent's
// path to the server with a TCP forwarder of its own. Toxiproxy would do
// this as a library, but it is not among the modules known to work here
// and brings a server, a CLI and their dependencies for the three faults
// needed: delay, loss (a connection reset mid-stream, which is what heavy
// loss looks like to TCP once retransmissions give up) and stalls (bytes
// held, the connection kept open).

// proxyFaults is how a faultProxy degrades the traffic it forwards.
type proxyFaults struct {
	// Delay is added before every chunk forwarded, in both directions.
	Delay time.Duration
	// ResetProb is the probability that a chunk is not forwarded and the
	// connection reset instead.
	ResetProb float64
	// Stall holds every chunk until the stall is lifted (or the connection
	// closed).
	Stall bool
}

// maxProxyConns bounds the connections one forwarder keeps open.
const maxProxyConns = 256

// faultProxy forwards TCP connections from a listener to an upstream,
// applying the faults currently set.
type faultProxy struct {
	ln   net.Listener
	dial func(context.Context) (net.Conn, error)

	faults atomic.Pointer[proxyFaults]
	// unstall is closed and replaced when a stall is lifted.
	mu      sync.Mutex
	unstall chan struct{}
	conns   map[net.Conn]struct{}

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// newFaultProxy starts forwarding connections accepted on ln to what dial
// returns, without faults until setFaults. close stops it.
func newFaultProxy(ln net.Listener, dial func(context.Context) (net.Conn, error)) *faultProxy {
	ctx, cancel := context.WithCancel(context.Background())
	p := &faultProxy{ln: ln, dial: dial, unstall: make(chan struct{}), conns: map[net.Conn]struct{}{}, ctx: ctx, cancel: cancel}
	p.faults.Store(&proxyFaults{})
	p.wg.Go(p.serve)
	return p
}

// setFaults replaces the faults; lifting a stall releases held chunks.
func (p *faultProxy) setFaults(f proxyFaults) {
	old := p.faults.Swap(&f)
	if old.Stall && !f.Stall {
		p.mu.Lock()
		close(p.unstall)
		p.unstall = make(chan struct{})
		p.mu.Unlock()
	}
}

func (p *faultProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			if p.ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		p.wg.Go(func() { p.forward(c) })
	}
}

// track registers c; it refuses connections beyond maxProxyConns.
func (p *faultProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.conns) >= maxProxyConns || p.ctx.Err() != nil {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *faultProxy) untrack(c net.Conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.conns, c)
}

func (p *faultProxy) forward(down net.Conn) {
	defer p.untrack(down)
	defer down.Close()
	up, err := p.dial(p.ctx)
	if err != nil {
		return
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer p.untrack(up)
	defer up.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		p.copy(dst, src)
		// Closing both ends ends the other direction too.
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go pipe(up, down)
	go pipe(down, up)
	<-done
	<-done
}

// copy forwards src to dst chunk by chunk, applying the faults of the
// moment to each chunk.
func (p *faultProxy) copy(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			f := p.faults.Load()
			if f.Stall {
				p.mu.Lock()
				ch := p.unstall
				p.mu.Unlock()
				select {
				case <-ch:
				case <-p.ctx.Done():
					return
				}
				f = p.faults.Load()
			}
			if f.Delay > 0 {
				select {
				case <-time.After(f.Delay):
				case <-p.ctx.Done():
					return
				}
			}
			if f.ResetProb > 0 && rand.Float64() < f.ResetProb {
				if tc, ok := src.(*net.TCPConn); ok {
					_ = tc.SetLinger(0)
				}
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or a closed connection: pipe closes both ends
		}
	}
}

// close stops accepting, closes every forwarded connection and waits for
// the forwarders. It is idempotent.
func (p *faultProxy) close() {
	p.cancel()
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}
