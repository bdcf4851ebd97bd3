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
	"io"
	"net"
	"os"
	"sync"
	"time"

	"github.com/baremetal-sd/baremetal_sd/internal/bufpool"
)

// memPipeBuffer bounds the bytes one direction of a memPipe holds before
// its writer waits: as much as the agent reads from its listener for one
// frame of the session.
const memPipeBuffer = forwardBuffer

// memPipeChunk is the capacity a direction's buffer starts with; it grows
// up to memPipeBuffer when a writer runs ahead of its reader.
const memPipeChunk = 32 << 10

// memPipe returns the two ends of an in-process connection whose writes
// are buffered, as a loopback TCP connection's are, up to memPipeBuffer
// bytes per direction. net.Pipe hands each write to a reader waiting for
// it: the agent's TLS listener writes a record of at most 16 KiB per call,
// and a buffer lets the records of a scrape gather while the tunnel sends
// the previous ones, so that they leave in large frames.
//
// A direction borrows its buffer from bufs only while it holds unread
// bytes, so a connection a scraper keeps alive between scrapes holds none,
// and the buffers of one scrape serve the next.
func memPipe(bufs *bufpool.Pool, aAddr, bAddr net.Addr) (a, b *memConn) {
	ab, ba := newMemHalf(bufs), newMemHalf(bufs)
	a = &memConn{in: ba, out: ab, local: aAddr, remote: bAddr, rd: newDeadline(), wd: newDeadline()}
	b = &memConn{in: ab, out: ba, local: bAddr, remote: aAddr, rd: newDeadline(), wd: newDeadline()}
	return a, b
}

// memHalf is one direction of a memPipe.
type memHalf struct {
	bufs *bufpool.Pool
	mu   sync.Mutex
	// box is the buffer borrowed from bufs, nil while nothing is unread;
	// buf is *box as the writer appended to it, and the unread bytes are
	// buf[off:].
	box  *[]byte
	buf  []byte
	off  int
	eof  bool // the writer is done: the reader sees io.EOF once buf is read
	gone bool // the reader is gone: writes fail
	// readable and writable wake a waiting reader or writer; a buffered
	// channel of one keeps a wake-up that came before the wait.
	readable, writable chan struct{}
}

func newMemHalf(bufs *bufpool.Pool) *memHalf {
	return &memHalf{bufs: bufs, readable: make(chan struct{}, 1), writable: make(chan struct{}, 1)}
}

func wake(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// release gives the buffer back to bufs; h.mu is held.
func (h *memHalf) release() {
	if h.box == nil {
		return
	}
	*h.box = h.buf
	h.bufs.Put(h.box)
	h.box, h.buf, h.off = nil, nil, 0
}

func (h *memHalf) read(p []byte, d *deadline) (int, error) {
	for {
		if d.exceeded() {
			return 0, os.ErrDeadlineExceeded
		}
		h.mu.Lock()
		// A reader that leaves something for other readers (bytes, the
		// end) passes its wake-up on.
		switch {
		case h.gone:
			h.mu.Unlock()
			wake(h.readable)
			return 0, net.ErrClosed
		case len(h.buf) > h.off:
			n := copy(p, h.buf[h.off:])
			h.off += n
			if h.off == len(h.buf) {
				h.release()
			}
			more := h.off > 0 || h.eof
			h.mu.Unlock()
			wake(h.writable)
			if more {
				wake(h.readable)
			}
			return n, nil
		case h.eof:
			h.mu.Unlock()
			wake(h.readable)
			return 0, io.EOF
		}
		h.mu.Unlock()
		if len(p) == 0 {
			return 0, nil
		}
		select {
		case <-h.readable:
		case <-d.wait():
			return 0, os.ErrDeadlineExceeded
		}
	}
}

// writeTo writes what the direction holds to w until the writer is done,
// without copying it out first: it takes the buffer whole, lends the
// writer another, and writes the one taken with the lock released, so a
// slow w keeps nobody waiting but the writer whose buffer is full.
func (h *memHalf) writeTo(w io.Writer, d *deadline) (int64, error) {
	var total int64
	for {
		if d.exceeded() {
			return total, os.ErrDeadlineExceeded
		}
		h.mu.Lock()
		switch {
		case h.gone:
			h.mu.Unlock()
			wake(h.readable)
			return total, net.ErrClosed
		case len(h.buf) > h.off:
			box, unread := h.box, h.buf[h.off:]
			*box = h.buf
			h.box, h.buf, h.off = nil, nil, 0
			eof := h.eof
			h.mu.Unlock()
			wake(h.writable)
			if eof {
				wake(h.readable)
			}
			n, err := w.Write(unread)
			total += int64(n)
			h.bufs.Put(box)
			if err != nil {
				return total, err
			}
			continue
		case h.eof:
			h.mu.Unlock()
			wake(h.readable)
			return total, nil
		}
		h.mu.Unlock()
		select {
		case <-h.readable:
		case <-d.wait():
			return total, os.ErrDeadlineExceeded
		}
	}
}

func (h *memHalf) write(p []byte, d *deadline) (int, error) {
	written := 0
	for {
		if d.exceeded() {
			return written, os.ErrDeadlineExceeded
		}
		h.mu.Lock()
		switch {
		case h.gone || h.eof:
			h.mu.Unlock()
			wake(h.writable)
			return written, net.ErrClosed
		case len(h.buf)-h.off < memPipeBuffer:
			n := min(len(p), memPipeBuffer-(len(h.buf)-h.off))
			if h.box == nil {
				h.box = h.bufs.Get(memPipeChunk)
				h.buf = *h.box
			}
			if h.off > 0 && len(h.buf)+n > cap(h.buf) {
				// Move the unread bytes to the front rather than grow the
				// slice.
				h.buf = h.buf[:copy(h.buf, h.buf[h.off:])]
				h.off = 0
			}
			h.buf = append(h.buf, p[:n]...)
			p = p[n:]
			written += n
			room := len(h.buf)-h.off < memPipeBuffer
			h.mu.Unlock()
			wake(h.readable)
			if len(p) == 0 {
				if room {
					wake(h.writable)
				}
				return written, nil
			}
			continue
		}
		h.mu.Unlock()
		select {
		case <-h.writable:
		case <-d.wait():
			return written, os.ErrDeadlineExceeded
		}
	}
}

// closeWrite ends the direction for its reader after what it holds.
func (h *memHalf) closeWrite() {
	h.mu.Lock()
	h.eof = true
	h.mu.Unlock()
	wake(h.readable)
	wake(h.writable)
}

// closeRead drops what the direction holds and fails its writer.
func (h *memHalf) closeRead() {
	h.mu.Lock()
	h.gone = true
	h.release()
	h.mu.Unlock()
	wake(h.readable)
	wake(h.writable)
}

// memConn is one end of a memPipe.
type memConn struct {
	in, out       *memHalf
	local, remote net.Addr
	rd, wd        *deadline
	closeOnce     sync.Once
}

func (c *memConn) Read(p []byte) (int, error)  { return c.in.read(p, c.rd) }
func (c *memConn) Write(p []byte) (int, error) { return c.out.write(p, c.wd) }

// WriteTo implements io.WriterTo: it writes what the other end writes to
// w as it comes, until the other end is done, the way io.Copy would but
// from the connection's own buffer.
func (c *memConn) WriteTo(w io.Writer) (int64, error) { return c.in.writeTo(w, c.rd) }

// CloseWrite sends EOF to the other end after the bytes written so far.
func (c *memConn) CloseWrite() error {
	c.out.closeWrite()
	return nil
}

// Close ends both directions: the other end reads what was written
// before, then io.EOF, and its writes fail.
func (c *memConn) Close() error {
	c.closeOnce.Do(func() {
		c.out.closeWrite()
		c.in.closeRead()
		c.rd.set(time.Time{})
		c.wd.set(time.Time{})
	})
	return nil
}

func (c *memConn) LocalAddr() net.Addr  { return c.local }
func (c *memConn) RemoteAddr() net.Addr { return c.remote }

func (c *memConn) SetDeadline(t time.Time) error {
	c.rd.set(t)
	c.wd.set(t)
	return nil
}

func (c *memConn) SetReadDeadline(t time.Time) error {
	c.rd.set(t)
	return nil
}

func (c *memConn) SetWriteDeadline(t time.Time) error {
	c.wd.set(t)
	return nil
}

// deadline is a read or write deadline that wakes the calls blocked on it
// when it passes, including when it is moved into the past while they
// wait (net/http does that to end a read in flight).
type deadline struct {
	mu     sync.Mutex
	timer  *time.Timer
	passed chan struct{} // closed once the deadline has passed
}

func newDeadline() *deadline { return &deadline{passed: make(chan struct{})} }

func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil && !d.timer.Stop() {
		<-d.passed // the timer fired or fires: wait until it closed passed
	}
	d.timer = nil
	select {
	case <-d.passed:
		d.passed = make(chan struct{})
	default:
	}
	if t.IsZero() {
		return
	}
	wait := time.Until(t)
	if wait <= 0 {
		close(d.passed)
		return
	}
	passed := d.passed
	d.timer = time.AfterFunc(wait, func() { close(passed) })
}

func (d *deadline) exceeded() bool {
	select {
	case <-d.wait():
		return true
	default:
		return false
	}
}

func (d *deadline) wait() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.passed
}
