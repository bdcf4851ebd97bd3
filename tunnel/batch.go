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
	"crypto/tls"
	"net"
	"sync"
)

// batchSize is how many bytes of TLS records the tunnel's connection
// gathers, at least, before one system call writes them: four full
// records.
const batchSize = 64 << 10

// batchingConn sits below the tunnel's TLS connection and gathers the
// records of one TLS write into few system calls. crypto/tls writes each
// record of at most 16 KiB on its own, and Go's sockets send at once
// (TCP_NODELAY): a 256 KiB frame of the agent's session costs 16 writes,
// each a TCP segment the kernels of both ends process. Writes outside a
// batch (the handshake, alerts, a key update answered while reading) go
// straight through.
type batchingConn struct {
	net.Conn

	mu       sync.Mutex
	batching bool
	buf      []byte
	err      error
}

func (b *batchingConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.batching {
		return b.Conn.Write(p)
	}
	if b.err != nil {
		return 0, b.err
	}
	b.buf = append(b.buf, p...)
	if len(b.buf) >= batchSize {
		if err := b.flushLocked(); err != nil {
			return 0, err
		}
	}
	return len(p), nil
}

func (b *batchingConn) begin() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// end writes what the batch gathered and returns the first error of the
// batch's writes.
func (b *batchingConn) end() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batching = false
	err := b.flushLocked()
	b.err = nil
	return err
}

func (b *batchingConn) flushLocked() error {
	if b.err != nil || len(b.buf) == 0 {
		return b.err
	}
	_, b.err = b.Conn.Write(b.buf)
	b.buf = b.buf[:0]
	return b.err
}

// batchedTLS is the tunnel's TLS connection as its session writes to it:
// every Write is one batch of records.
type batchedTLS struct {
	*tls.Conn
	raw *batchingConn
}

func (c *batchedTLS) Write(p []byte) (int, error) {
	c.raw.begin()
	n, err := c.Conn.Write(p)
	if ferr := c.raw.end(); err == nil && ferr != nil {
		// The records were sealed but not all sent: the connection is
		// broken, as a failed write of crypto/tls leaves it.
		return 0, ferr
	}
	return n, err
}
