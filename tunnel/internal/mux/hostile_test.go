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
	"fmt"
	"io"
	"net"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/internal/poll"
)

func frame(typ uint8, flags uint16, id, length uint32, body ...byte) []byte {
	var h header
	h.encode(typ, flags, id, length)
	return append(h[:], body...)
}

// readFrames reads the frames the session wrote until it closes the
// connection, skipping data bodies.
func readFrames(t *testing.T, c net.Conn) []header {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var out []header
	for {
		var h header
		if _, err := io.ReadFull(c, h[:]); err != nil {
			return out
		}
		out = append(out, h)
		if h.typ() == typeData {
			if _, err := io.CopyN(io.Discard, c, int64(h.length())); err != nil {
				return out
			}
		}
	}
}

// TestSession_HostilePeer: a peer that breaks the protocol ends the
// session with a counted reason and a GoAway that says so, and never
// makes it allocate what a header claims.
func TestSession_HostilePeer(t *testing.T) {
	cat := func(frames ...[]byte) []byte {
		var b []byte
		for _, f := range frames {
			b = append(b, f...)
		}
		return b
	}
	for _, tc := range []struct {
		name   string
		open   int // streams the session opens first: ids 1, 3, …
		send   []byte
		reason string // the violation; "" for none
	}{
		{"bad version", 0, []byte{1, typePing, 0, flagSYN, 0, 0, 0, 0, 0, 0, 0, 1}, ReasonVersion},
		{"unknown type", 0, frame(4, 0, 0, 0), ReasonType},
		{"ping on a stream", 1, frame(typePing, flagSYN, 1, 7), ReasonStreamID},
		{"GoAway on a stream", 1, frame(typeGoAway, 0, 1, 0), ReasonStreamID},
		{"data for stream 0", 0, frame(typeData, 0, 0, 3, 1, 2, 3), ReasonStreamID},
		{"data for a stream never opened, 4 GiB long", 1, frame(typeData, 0, 7, 0xffffffff), ReasonUnknownStream},
		{"window update for a stream never opened", 1, frame(typeWindowUpd, flagACK, 5, 1), ReasonUnknownStream},
		{"peer opens a stream with the session's parity", 0, frame(typeWindowUpd, flagSYN, 3, 0), ReasonStreamID},
		{"peer opens the same stream twice", 0, cat(frame(typeWindowUpd, flagSYN, 2, 0), frame(typeData, flagSYN, 2, 0)), ReasonStreamID},
		{"data beyond the window", 1, cat(frame(typeWindowUpd, flagACK, 1, 0), frame(typeData, 0, 1, testWindow+1)), ReasonWindow},
		{"data of 4 GiB", 1, frame(typeData, flagACK, 1, 0xffffffff), ReasonWindow},
		{"data beyond the window in two frames", 1, cat(frame(typeData, flagACK, 1, testWindow-1, make([]byte, testWindow-1)...), frame(typeData, 0, 1, 2, 1, 2)), ReasonWindow},
		{"window beyond 4 GiB", 1, frame(typeWindowUpd, flagACK, 1, 0xffffffff), ReasonWindowOverflow},
		{"second FIN", 1, cat(frame(typeWindowUpd, flagACK|flagFIN, 1, 0), frame(typeWindowUpd, flagFIN, 1, 0)), ReasonFlags},
		{"stale stream's data beyond the window", 1, cat(frame(typeWindowUpd, flagRST, 1, 0), frame(typeData, 0, 1, testWindow+1)), ReasonWindow},
		{"refused stream's data beyond the initial window", 0, cat(frame(typeWindowUpd, flagSYN, 2, 0), frame(typeData, 0, 2, initialWindow+1)), ReasonWindow},
		{"truncated header", 0, []byte{0, typePing, 0}, ""},
		{"GoAway with a protocol error", 0, frame(typeGoAway, 0, 0, goAwayProtocolError), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v violations
			sc, peer := dialPair(t, "tcp")
			s := NewSession(sc, testConfig(&v))
			defer s.Close()
			for range tc.open {
				if _, err := s.Open(); err != nil {
					t.Fatal(err)
				}
			}
			var before runtime.MemStats
			runtime.ReadMemStats(&before)
			if _, err := peer.Write(tc.send); err != nil {
				t.Fatal(err)
			}
			if tc.reason == "" {
				// Ends with the connection, or at once.
				_ = peer.(*net.TCPConn).CloseWrite()
			}
			select {
			case <-s.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("the session did not end")
			}
			var after runtime.MemStats
			runtime.ReadMemStats(&after)
			if d := after.TotalAlloc - before.TotalAlloc; d > 4<<20 {
				t.Errorf("the session allocated %d bytes", d)
			}
			var viol *violation
			switch {
			case tc.reason == "" && errors.As(s.Err(), &viol):
				t.Fatalf("ended with %v, not a violation", s.Err())
			case tc.reason == "":
				if s.Err() == nil {
					t.Fatal("no error")
				}
				return
			case !errors.As(s.Err(), &viol) || viol.reason != tc.reason:
				t.Fatalf("ended with %v, want a violation %q", s.Err(), tc.reason)
			}
			if got := v.get(tc.reason); got != 1 {
				t.Errorf("violations %q: %d, want 1", tc.reason, got)
			}
			frames := readFrames(t, peer)
			if len(frames) == 0 {
				t.Fatal("the session wrote nothing")
			}
			last := frames[len(frames)-1]
			if last.typ() != typeGoAway || last.length() != goAwayProtocolError {
				t.Errorf("last frame written: %s, want a GoAway for a protocol error", &last)
			}
		})
	}
}

// TestSession_PeerOpensStream: a stream the peer opens is reset, counted,
// and the session goes on; frames still on their way for it are dropped.
func TestSession_PeerOpensStream(t *testing.T) {
	var v violations
	sc, peer := dialPair(t, "tcp")
	s := NewSession(sc, testConfig(&v))
	defer s.Close()
	send := append(frame(typeData, flagSYN, 2, 5, []byte("hello")...), frame(typeData, 0, 2, 3, 'a', 'b', 'c')...)
	send = append(send, frame(typeWindowUpd, flagFIN, 2, 0)...)
	send = append(send, frame(typePing, flagSYN, 0, 77)...)
	if _, err := peer.Write(send); err != nil {
		t.Fatal(err)
	}
	_ = peer.SetReadDeadline(time.Now().Add(10 * time.Second))
	var got []header
	for len(got) < 2 {
		var h header
		if _, err := io.ReadFull(peer, h[:]); err != nil {
			t.Fatalf("after %d frames: %v", len(got), err)
		}
		got = append(got, h)
	}
	if h := got[0]; h.typ() != typeWindowUpd || h.flags() != flagRST || h.stream() != 2 {
		t.Errorf("answer to the peer's SYN: %s, want RST", &h)
	}
	if h := got[1]; h.typ() != typePing || h.flags() != flagACK || h.length() != 77 {
		t.Errorf("answer to the ping: %s, want its ACK", &h)
	}
	if s.IsClosed() {
		t.Fatalf("session ended: %v", s.Err())
	}
	if n := v.get(ReasonPeerOpened); n != 1 {
		t.Errorf("violations %q: %d, want 1", ReasonPeerOpened, n)
	}
}

// TestStream_BufferBoundedByWindow: however a peer cuts its data into
// frames, a stream nobody reads holds its window and at most two chunks
// more, and hands the data out intact.
func TestStream_BufferBoundedByWindow(t *testing.T) {
	for _, size := range []int{100, chunkSize/2 + 1, chunkSize - 1, chunkSize + 1, 3*chunkSize + 7} {
		t.Run(strconv.Itoa(size), func(t *testing.T) {
			sc, peer := dialPair(t, "tcp")
			s := NewSession(sc, testConfig(nil))
			defer s.Close()
			st, err := s.Open()
			if err != nil {
				t.Fatal(err)
			}
			want := payload(testWindow, uint64(size))
			out := frame(typeWindowUpd, flagACK, 1, 0)
			for rest := want; len(rest) > 0; {
				n := min(size, len(rest))
				out = append(out, frame(typeData, 0, 1, uint32(n), rest[:n]...)...)
				rest = rest[n:]
			}
			go func() { _, _ = peer.Write(out) }()
			poll.Until(t, 10*time.Second, func() error {
				st.mu.Lock()
				defer st.mu.Unlock()
				if st.buffered < testWindow {
					return fmt.Errorf("%d bytes buffered", st.buffered)
				}
				return nil
			})
			st.mu.Lock()
			held := 0
			for _, b := range st.bufs {
				held += cap(*b)
			}
			st.mu.Unlock()
			if held > testWindow+2*chunkSize {
				t.Errorf("%d bytes held for a window of %d", held, testWindow)
			}
			got := make([]byte, testWindow)
			if _, err := io.ReadFull(st, got); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatal("the data read is not the data sent")
			}
		})
	}
}
