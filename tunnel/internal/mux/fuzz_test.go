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
	"bytes"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// fakeConn plays a peer's bytes to the session once started, and drops
// what the session writes.
type fakeConn struct {
	start chan struct{}
	r     *bytes.Reader
	once  sync.Once
	done  chan struct{}
}

func newFakeConn(b []byte) *fakeConn {
	return &fakeConn{start: make(chan struct{}), r: bytes.NewReader(b), done: make(chan struct{})}
}

func (c *fakeConn) Read(b []byte) (int, error) {
	select {
	case <-c.start:
	case <-c.done:
		return 0, net.ErrClosed
	}
	return c.r.Read(b)
}

func (c *fakeConn) Write(b []byte) (int, error) {
	select {
	case <-c.done:
		return 0, net.ErrClosed
	default:
		return len(b), nil
	}
}

func (c *fakeConn) Close() error {
	c.once.Do(func() { close(c.done) })
	return nil
}

func (c *fakeConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fakeConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fakeConn) SetDeadline(time.Time) error      { return nil }
func (c *fakeConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fakeConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzSession feeds a session with two open streams (1 and 3) arbitrary
// bytes from its peer: it must end, with a violation of a known reason or
// the connection's end, never panic, and never buffer more than a window.
func FuzzSession(f *testing.F) {
	cat := func(frames ...[]byte) []byte {
		var b []byte
		for _, fr := range frames {
			b = append(b, fr...)
		}
		return b
	}
	f.Add([]byte{})
	f.Add(frame(typePing, flagSYN, 0, 1))
	f.Add(cat(frame(typeWindowUpd, flagACK, 1, 1<<20), frame(typeData, 0, 1, 5, []byte("hello")...), frame(typeWindowUpd, flagFIN, 1, 0)))
	f.Add(cat(frame(typeData, flagACK, 3, 3, 'a', 'b', 'c'), frame(typeWindowUpd, flagRST, 3, 0), frame(typeData, 0, 3, 2, 'x', 'y')))
	f.Add(cat(frame(typeWindowUpd, flagSYN, 2, 0), frame(typeData, 0, 2, 1, 'z'), frame(typeGoAway, 0, 0, 0)))
	f.Add(cat(frame(typeWindowUpd, flagACK|flagFIN, 1, 0), frame(typeWindowUpd, flagFIN, 1, 0)))
	f.Add(frame(typeData, 0, 1, 0xffffffff))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, in []byte) {
		c := newFakeConn(in)
		cfg := &Config{Window: 1 << 20, OpenTimeout: time.Minute, CloseTimeout: time.Minute}
		var reasons []string
		var mu sync.Mutex
		cfg.Violation = func(r string) { mu.Lock(); reasons = append(reasons, r); mu.Unlock() }
		s := NewSession(c, cfg)
		var streams []*Stream
		for range 2 {
			st, err := s.Open()
			if err != nil {
				t.Fatal(err)
			}
			streams = append(streams, st)
		}
		close(c.start)
		select {
		case <-s.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the session did not end at the end of its input")
		}
		if s.Err() == nil {
			t.Fatal("ended without an error")
		}
		var v *violation
		if errors.As(s.Err(), &v) && !slices.Contains(Reasons(), v.reason) {
			t.Fatalf("unknown reason %q", v.reason)
		}
		mu.Lock()
		for _, r := range reasons {
			if !slices.Contains(Reasons(), r) {
				t.Fatalf("unknown reason %q", r)
			}
		}
		mu.Unlock()
		for _, st := range streams {
			st.mu.Lock()
			n := st.buffered
			st.mu.Unlock()
			if n > int(cfg.window()) {
				t.Fatalf("stream %d buffered %d bytes, beyond its window", st.id, n)
			}
			got, err := io.ReadAll(st)
			if len(got) != n {
				t.Fatalf("stream %d: read %d of %d bytes buffered, then %v", st.id, len(got), n, err)
			}
			_ = st.Close()
		}
	})
}
