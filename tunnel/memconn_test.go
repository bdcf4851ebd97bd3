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
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/net/nettest"

	"github.com/baremetal-sd/baremetal_sd/internal/bufpool"
)

type testAddr string

func (a testAddr) Network() string { return "test" }
func (a testAddr) String() string  { return string(a) }

// TestMemPipe_Conn runs x/net's conformance tests of net.Conn on the
// in-process connection: reads, writes, deadlines, closing, concurrent
// use.
func TestMemPipe_Conn(t *testing.T) {
	nettest.TestConn(t, func() (c1, c2 net.Conn, stop func(), err error) {
		a, b := memPipe(&bufpool.Pool{}, testAddr("a"), testAddr("b"))
		return a, b, func() { _ = a.Close(); _ = b.Close() }, nil
	})
}

// TestMemPipe_WriteTo checks the path by which the agent sends what its
// listener wrote into a tunnel stream: every byte in order, however the
// writes and the destination's writes are cut, then how it ends.
func TestMemPipe_WriteTo(t *testing.T) {
	payload := make([]byte, 3*memPipeBuffer+12345)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	for _, tc := range []struct {
		name      string
		writeSize int
		slow      bool // the destination takes a while per write
	}{
		{name: "records", writeSize: 16 << 10},
		{name: "small writes", writeSize: 100},
		{name: "writes larger than the buffer", writeSize: memPipeBuffer + 1},
		{name: "slow destination", writeSize: 16 << 10, slow: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := memPipe(&bufpool.Pool{}, testAddr("a"), testAddr("b"))
			defer a.Close()
			defer b.Close()
			go func() {
				for rest := payload; len(rest) > 0; {
					n := min(tc.writeSize, len(rest))
					if _, err := b.Write(rest[:n]); err != nil {
						t.Errorf("Write: %v", err)
						return
					}
					rest = rest[n:]
				}
				_ = b.CloseWrite()
			}()
			dst := &recordingWriter{slow: tc.slow}
			n, err := a.WriteTo(dst)
			if err != nil {
				t.Fatalf("WriteTo: %v", err)
			}
			if n != int64(len(payload)) || !bytes.Equal(dst.buf.Bytes(), payload) {
				t.Fatalf("WriteTo wrote %d bytes (%d recorded), want the %d written, in order", n, dst.buf.Len(), len(payload))
			}
			if dst.largest > memPipeBuffer {
				t.Errorf("a write of %d bytes, more than the pipe holds (%d)", dst.largest, memPipeBuffer)
			}
		})
	}

	t.Run("destination fails", func(t *testing.T) {
		a, b := memPipe(&bufpool.Pool{}, testAddr("a"), testAddr("b"))
		defer a.Close()
		defer b.Close()
		if _, err := b.Write([]byte("scrape")); err != nil {
			t.Fatal(err)
		}
		broken := errors.New("stream reset")
		if _, err := a.WriteTo(failingWriter{broken}); !errors.Is(err, broken) {
			t.Errorf("WriteTo: %v, want the destination's error", err)
		}
	})
	t.Run("own end closed", func(t *testing.T) {
		a, b := memPipe(&bufpool.Pool{}, testAddr("a"), testAddr("b"))
		defer b.Close()
		errc := make(chan error, 1)
		go func() { _, err := a.WriteTo(io.Discard); errc <- err }()
		_ = a.Close()
		if err := <-errc; !errors.Is(err, net.ErrClosed) {
			t.Errorf("WriteTo after Close: %v, want net.ErrClosed", err)
		}
	})
	t.Run("read deadline", func(t *testing.T) {
		a, b := memPipe(&bufpool.Pool{}, testAddr("a"), testAddr("b"))
		defer a.Close()
		defer b.Close()
		_ = a.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := a.WriteTo(io.Discard); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("WriteTo past the read deadline: %v, want os.ErrDeadlineExceeded", err)
		}
	})
}

// TestMemPipe_HoldsNoBufferWhenDrained checks that a connection a scraper
// keeps alive between scrapes holds no buffer once everything written was
// read, by Read or by WriteTo, or once its reader is gone.
func TestMemPipe_HoldsNoBufferWhenDrained(t *testing.T) {
	a, b := memPipe(&bufpool.Pool{}, testAddr("a"), testAddr("b"))
	defer a.Close()
	defer b.Close()
	held := func(h *memHalf) bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return h.box != nil || h.buf != nil
	}

	msg := bytes.Repeat([]byte("x"), 100<<10)
	if _, err := a.Write(msg); err != nil {
		t.Fatal(err)
	}
	if !held(a.out) {
		t.Fatal("a direction with unread bytes holds no buffer")
	}
	if _, err := io.ReadFull(b, make([]byte, len(msg)-1)); err != nil {
		t.Fatal(err)
	}
	if !held(a.out) {
		t.Fatal("a direction with one unread byte holds no buffer")
	}
	if _, err := io.ReadFull(b, make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	if held(a.out) {
		t.Error("a direction read to the end by Read still holds its buffer")
	}

	if _, err := b.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = b.CloseWrite()
	if _, err := a.WriteTo(io.Discard); err != nil {
		t.Fatal(err)
	}
	if held(b.out) {
		t.Error("a direction read to the end by WriteTo still holds its buffer")
	}

	if _, err := a.Write(msg); err != nil {
		t.Fatal(err)
	}
	_ = b.Close()
	if held(a.out) {
		t.Error("a direction whose reader closed still holds its buffer")
	}
}

// recordingWriter keeps what it is given and the largest single write.
type recordingWriter struct {
	buf     bytes.Buffer
	largest int
	slow    bool
}

func (w *recordingWriter) Write(p []byte) (int, error) {
	if w.slow {
		time.Sleep(time.Millisecond)
	}
	w.largest = max(w.largest, len(p))
	return w.buf.Write(p)
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }
