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
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"sync"
	"time"
)

var (
	errOpenTimeout  = fmt.Errorf("%w: the peer did not acknowledge the stream in time", ErrReset)
	errCloseTimeout = fmt.Errorf("%w: the peer did not close the stream in time", ErrReset)
)

// Stream is one stream of a session, a net.Conn. CloseWrite sends FIN and
// reads go on; Close sends FIN too, and then the peer's data still on the
// way resets the stream, as does a Close with received data left unread,
// as TCP does.
type Stream struct {
	s  *Session
	id uint32

	mu   sync.Mutex
	cond sync.Cond // on mu: data, window, state or deadline changed

	// Received data not read yet: bufs[0] from off on, then the others.
	// Nil while there is none.
	bufs     []*[]byte
	off      int
	buffered int
	// recvWindow is what the peer may still send, sendWindow what it
	// lets the stream send.
	recvWindow uint32
	sendWindow uint32

	acked   bool  // the peer acknowledged the stream
	finRecv bool  // the peer closed its side
	finSent bool  // this side closed its side: FIN sent
	closed  bool  // Close called: no more reads either
	reset   bool  // reset, by the peer or here; err says why
	gone    bool  // forgotten by the session, or the session ended
	err     error // why the stream was reset, or the session's end

	rdl, wdl       time.Time   // deadlines
	rtimer, wtimer *time.Timer // wake waiters at the deadlines
	timer          *time.Timer // the open, then the close timeout
}

var _ net.Conn = (*Stream)(nil)

// Read reads data the peer sent.
func (st *Stream) Read(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	cfg := st.s.cfg
	st.mu.Lock()
	for st.buffered == 0 {
		if err := st.readErr(); err != nil {
			st.mu.Unlock()
			return 0, err
		}
		st.cond.Wait()
	}
	n := 0
	for n < len(b) && st.buffered > 0 {
		c := *st.bufs[0]
		k := copy(b[n:], c[st.off:])
		n += k
		st.off += k
		st.buffered -= k
		if st.off == len(c) {
			cfg.release(st.bufs[0])
			st.bufs[0] = nil
			st.bufs = st.bufs[1:]
			st.off = 0
		}
	}
	if st.buffered == 0 {
		st.bufs = nil
	}
	// Top the peer's window up once half of it was read, as yamux does.
	var delta uint32
	if !st.finRecv && !st.reset && !st.gone {
		w := cfg.window()
		if d := w - uint32(st.buffered) - st.recvWindow; d >= w/2 {
			st.recvWindow += d
			delta = d
		}
	}
	st.mu.Unlock()
	if delta > 0 {
		// A failed write ends the session; the data read is still good.
		_ = st.s.writeFrame(typeWindowUpd, 0, st.id, delta, nil)
	}
	return n, nil
}

// readErr says why nothing can be read, or nil to wait; mu is held.
func (st *Stream) readErr() error {
	switch {
	case st.closed && !st.reset:
		return net.ErrClosed
	case st.reset:
		return st.err
	case st.finRecv:
		return io.EOF
	case st.gone:
		return st.err
	case !st.rdl.IsZero() && !time.Now().Before(st.rdl):
		return os.ErrDeadlineExceeded
	}
	return nil
}

// Write writes b to the peer in frames of at most the send window.
func (st *Stream) Write(b []byte) (int, error) {
	total := 0
	for len(b) > 0 {
		st.mu.Lock()
		for st.sendWindow == 0 {
			if err := st.writeErr(true); err != nil {
				st.mu.Unlock()
				return total, err
			}
			st.cond.Wait()
		}
		m := min(len(b), int(min(st.sendWindow, maxBody)))
		st.sendWindow -= uint32(m)
		st.mu.Unlock()
		if err := st.s.writeData(st, b[:m]); err != nil {
			return total, err
		}
		total += m
		b = b[m:]
	}
	return total, nil
}

// writeErr says why nothing can be written, or nil; with held, mu is held
// already.
func (st *Stream) writeErr(held bool) error {
	if !held {
		st.mu.Lock()
		defer st.mu.Unlock()
	}
	switch {
	case st.reset:
		return st.err
	case st.finSent || st.closed:
		return net.ErrClosed
	case st.gone:
		return st.err
	case !st.wdl.IsZero() && !time.Now().Before(st.wdl):
		return os.ErrDeadlineExceeded
	}
	return nil
}

// Close closes the stream: FIN if all the peer sent was read, RST if not.
func (st *Stream) Close() error {
	cfg := st.s.cfg
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		return nil
	}
	st.closed = true
	st.cond.Broadcast()
	if st.reset || st.gone {
		st.drop()
		st.mu.Unlock()
		return nil
	}
	if st.buffered > 0 {
		st.mu.Unlock()
		st.abort(ErrReset)
		return nil
	}
	if !st.finRecv {
		st.timer.Reset(orDefault(cfg.CloseTimeout))
	}
	st.mu.Unlock()
	return st.sendFIN()
}

// CloseWrite closes the stream's sending side: FIN. Reads go on.
func (st *Stream) CloseWrite() error {
	return st.sendFIN()
}

// sendFIN sends FIN once, and forgets the stream if the peer sent its own.
func (st *Stream) sendFIN() error {
	st.mu.Lock()
	if st.finSent || st.reset || st.gone {
		st.mu.Unlock()
		return nil
	}
	st.finSent = true
	both := st.finRecv
	st.cond.Broadcast()
	st.mu.Unlock()
	err := st.s.writeFrame(typeWindowUpd, flagFIN, st.id, 0, nil)
	if both {
		st.finish()
	}
	return err
}

// drop releases the received data; mu is held.
func (st *Stream) drop() {
	for _, p := range st.bufs {
		st.s.cfg.release(p)
	}
	st.bufs, st.off, st.buffered = nil, 0, 0
}

// abort resets the stream for err and tells the peer.
func (st *Stream) abort(err error) {
	st.mu.Lock()
	if st.gone {
		st.mu.Unlock()
		return
	}
	st.reset = true
	st.err = err
	st.drop()
	st.cond.Broadcast()
	st.mu.Unlock()
	_ = st.s.writeFrame(typeWindowUpd, flagRST, st.id, 0, nil)
	st.finish()
}

// expire is the open and close timeout.
func (st *Stream) expire() {
	st.mu.Lock()
	if st.gone || (st.acked && !st.closed) {
		st.mu.Unlock()
		return
	}
	err := errOpenTimeout
	if st.closed {
		err = errCloseTimeout
	}
	st.mu.Unlock()
	st.abort(err)
}

// finish forgets a stream that is done, closed both ways or reset.
func (st *Stream) finish() {
	st.mu.Lock()
	if st.gone {
		st.mu.Unlock()
		return
	}
	st.gone = true
	st.stopTimers()
	st.cond.Broadcast()
	st.mu.Unlock()
	st.s.forget(st.id)
}

// sessionEnded ends a stream with its session. Data received before stays
// readable.
func (st *Stream) sessionEnded() {
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.gone {
		return
	}
	st.gone = true
	st.err = ErrSessionClosed
	st.stopTimers()
	if st.closed {
		st.drop()
	}
	st.cond.Broadcast()
}

func (st *Stream) stopTimers() {
	for _, t := range []*time.Timer{st.timer, st.rtimer, st.wtimer} {
		if t != nil {
			t.Stop()
		}
	}
}

// frame acts on a data or window update frame for the stream, read by the
// session's read loop, and reads its body.
func (st *Stream) frame(h *header) error {
	flags, n := h.flags(), h.length()
	if flags&flagACK != 0 {
		st.mu.Lock()
		st.acked = true
		if !st.closed {
			st.timer.Stop()
		}
		st.mu.Unlock()
	}
	if h.typ() == typeWindowUpd {
		if err := st.grow(n); err != nil {
			return err
		}
	} else if n > 0 {
		if err := st.receive(n); err != nil {
			return err
		}
	}
	if flags&flagFIN != 0 {
		if err := st.remoteFIN(); err != nil {
			return err
		}
	}
	if flags&flagRST != 0 {
		st.mu.Lock()
		st.reset = true
		st.err = ErrReset
		st.drop()
		st.cond.Broadcast()
		st.mu.Unlock()
		st.finish()
	}
	return nil
}

func (st *Stream) grow(n uint32) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	w := uint64(st.sendWindow) + uint64(n)
	if w > math.MaxUint32 {
		return violated(ReasonWindowOverflow, "window of stream %d updated by %d beyond 4 GiB", st.id, n)
	}
	st.sendWindow = uint32(w)
	st.cond.Broadcast()
	return nil
}

// receive reads n bytes of data for the stream from the connection.
func (st *Stream) receive(n uint32) error {
	s := st.s
	st.mu.Lock()
	if n > st.recvWindow {
		w := st.recvWindow
		st.mu.Unlock()
		return violated(ReasonWindow, "%d bytes for stream %d, whose window is %d", n, st.id, w)
	}
	// Data after the peer's FIN is dropped; data for a stream closed here
	// resets it, as TCP answers data for a closed socket.
	drop := st.finRecv || st.reset || st.gone
	abort := st.closed && !drop
	if drop || abort {
		st.recvWindow -= n
	}
	st.mu.Unlock()
	if drop || abort {
		if err := s.skip(int(n)); err != nil {
			return err
		}
		if abort {
			st.abort(ErrReset)
		}
		return nil
	}
	for n > 0 {
		p := s.cfg.chunk()
		m := min(n, chunkSize)
		b := (*p)[:m]
		if _, err := io.ReadFull(s.conn, b); err != nil {
			s.cfg.release(p)
			return fmt.Errorf("read from the tunnel: %w", err)
		}
		*p = b
		st.push(p)
		n -= m
	}
	return nil
}

// push appends a chunk of received data. It first fills the room left in
// the last chunk, so that every chunk but the first and the last is full:
// the data buffered for a stream takes at most its window and two chunks,
// however the peer cuts it into frames. The window shrinks as the data
// arrives, not when its frame starts: a reader that takes the first chunk
// of a long frame must not give the peer back the window the rest of the
// frame still uses.
func (st *Stream) push(p *[]byte) {
	cfg := st.s.cfg
	st.mu.Lock()
	defer st.mu.Unlock()
	st.recvWindow -= uint32(len(*p))
	if st.closed || st.reset || st.gone {
		cfg.release(p)
		return
	}
	st.buffered += len(*p)
	st.cond.Broadcast()
	if k := len(st.bufs); k > 0 {
		last := st.bufs[k-1]
		if room := cap(*last) - len(*last); room > 0 {
			take := min(room, len(*p))
			*last = append(*last, (*p)[:take]...)
			if take == len(*p) {
				cfg.release(p)
				return
			}
			*p = (*p)[:copy(*p, (*p)[take:])]
		}
	}
	st.bufs = append(st.bufs, p)
}

func (st *Stream) remoteFIN() error {
	st.mu.Lock()
	if st.finRecv {
		st.mu.Unlock()
		return violated(ReasonFlags, "second FIN on stream %d", st.id)
	}
	st.finRecv = true
	both := st.finSent
	st.cond.Broadcast()
	st.mu.Unlock()
	if both {
		st.finish()
	}
	return nil
}

// LocalAddr is the session connection's.
func (st *Stream) LocalAddr() net.Addr { return st.s.conn.LocalAddr() }

// RemoteAddr is the session connection's.
func (st *Stream) RemoteAddr() net.Addr { return st.s.conn.RemoteAddr() }

// SetDeadline sets both deadlines.
func (st *Stream) SetDeadline(t time.Time) error {
	_ = st.SetReadDeadline(t)
	return st.SetWriteDeadline(t)
}

// SetReadDeadline bounds blocked and future Reads.
func (st *Stream) SetReadDeadline(t time.Time) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.rdl = t
	st.rtimer = st.arm(st.rtimer, t)
	return nil
}

// SetWriteDeadline bounds blocked and future Writes: the wait for the
// peer's window, not the write to the connection, which
// Config.WriteTimeout bounds.
func (st *Stream) SetWriteDeadline(t time.Time) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.wdl = t
	st.wtimer = st.arm(st.wtimer, t)
	return nil
}

// arm sets timer t to wake the waiters at deadline d; mu is held.
func (st *Stream) arm(t *time.Timer, d time.Time) *time.Timer {
	st.cond.Broadcast()
	if d.IsZero() || st.gone {
		if t != nil {
			t.Stop()
		}
		return t
	}
	if t == nil {
		return time.AfterFunc(time.Until(d), st.wake)
	}
	t.Reset(time.Until(d))
	return t
}

func (st *Stream) wake() {
	st.mu.Lock()
	st.cond.Broadcast()
	st.mu.Unlock()
}
