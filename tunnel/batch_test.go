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
	"crypto/rand"
	"crypto/tls"
	"io"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/ca"
)

// countingConn counts the writes that reach the socket.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// TestBatchingConn_GathersRecords: one Write of the tunnel's session
// leaves in few system calls, not one per TLS record, and the peer reads
// the same bytes; writes outside a batch, as the handshake's, go straight
// through; a write to a peer that is gone fails.
func TestBatchingConn_GathersRecords(t *testing.T) {
	f := newFleet(t, ServerConfig{})
	serving, err := tls.LoadX509KeyPair(filepath.Join(f.dataDir, ca.ServerCertFile), filepath.Join(f.dataDir, ca.ServerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, 1<<20)
	_, _ = rand.Read(payload)
	for _, tc := range []struct {
		name      string
		batched   bool
		maxWrites int64
		minWrites int64
	}{
		// 1 MiB is 64 records of 16 KiB.
		{"one write of the session", true, 1 + (1<<20)/batchSize + 1, 1},
		{"without batches", false, 1 << 20, 64},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			got := make(chan []byte, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					got <- nil
					return
				}
				defer c.Close()
				sc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{serving}})
				b, _ := io.ReadAll(io.LimitReader(sc, int64(len(payload))))
				got <- b
			}()
			raw, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			counted := &countingConn{Conn: raw}
			bc := &batchingConn{Conn: counted}
			conn := tls.Client(bc, &tls.Config{RootCAs: f.serverRoots, ServerName: "localhost"})
			defer conn.Close()
			if err := conn.Handshake(); err != nil {
				t.Fatal(err)
			}
			var w io.Writer = conn
			if tc.batched {
				w = &batchedTLS{Conn: conn, raw: bc}
			}
			before := counted.writes.Load()
			if _, err := w.Write(payload); err != nil {
				t.Fatal(err)
			}
			if n := counted.writes.Load() - before; n < tc.minWrites || n > tc.maxWrites {
				t.Errorf("%d writes reached the socket, want %d to %d", n, tc.minWrites, tc.maxWrites)
			}
			if b := <-got; !bytes.Equal(b, payload) {
				t.Fatalf("the peer read %d bytes, not what was written", len(b))
			}
			// The peer is gone: a write fails, at the latest the second.
			_ = l.Close()
			var werr error
			for range 2 {
				if _, werr = w.Write(payload); werr != nil {
					break
				}
			}
			if werr == nil {
				t.Error("writes to a closed peer succeeded")
			}
		})
	}
}
