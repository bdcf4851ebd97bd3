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

package relay

import (
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/klauspost/compress/gzip"
)

// acceptsGzip reports whether the scraper takes gzip (q > 0).
func acceptsGzip(req *http.Request) bool {
	for _, part := range strings.Split(req.Header.Get("Accept-Encoding"), ",") {
		enc, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(enc), "gzip") {
			continue
		}
		if q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q="); ok {
			v, err := strconv.ParseFloat(q, 64)
			return err == nil && v > 0
		}
		return true
	}
	return false
}

// newGzipWriter compresses responses at the fastest level: a relay on
// every host should spend its CPU on relaying, and the ratio on expositions
// is close to the default level's.
func newGzipWriter(w io.Writer) *gzip.Writer {
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		panic(err) // only for an invalid level, and BestSpeed is valid
	}
	return zw
}

// trackingWriter remembers whether anything reached the client, which
// decides between a clean 502 and aborting the response.
type trackingWriter struct {
	w       io.Writer
	started func()
	wrote   bool
}

func (t *trackingWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		// An empty write would commit a 200 before we know the outcome.
		return 0, nil
	}
	if !t.wrote {
		t.wrote = true
		t.started()
	}
	return t.w.Write(p)
}

// asyncWriter hands writes to a goroutine that passes them on to w, so
// that compressing one chunk and relaying the next run on two cores: the
// scrape through the relay then takes little longer than the relaying
// alone. It copies each write into one of a few reused buffers.
type asyncWriter struct {
	w      io.Writer
	ch     chan []byte
	free   chan []byte
	done   chan struct{}
	failed atomic.Bool
	err    error // read only after done is closed
}

// errAsyncFailed tells the producer to stop; Close returns the real error.
var errAsyncFailed = errors.New("relay: response write failed")

func newAsyncWriter(w io.Writer) *asyncWriter {
	const buffers = 3
	a := &asyncWriter{w: w, ch: make(chan []byte, buffers), free: make(chan []byte, buffers), done: make(chan struct{})}
	for range buffers {
		a.free <- nil
	}
	go a.run()
	return a
}

func (a *asyncWriter) run() {
	defer close(a.done)
	for b := range a.ch {
		if a.err == nil {
			if _, err := a.w.Write(b); err != nil {
				a.err = err
				a.failed.Store(true)
			}
		}
		a.free <- b[:0]
	}
}

func (a *asyncWriter) Write(p []byte) (int, error) {
	if a.failed.Load() {
		return 0, errAsyncFailed
	}
	b := append(<-a.free, p...)
	a.ch <- b
	return len(p), nil
}

// Close waits until everything was passed on and returns the first error.
func (a *asyncWriter) Close() error {
	close(a.ch)
	<-a.done
	return a.err
}

// response is the body writer of a relay response: optionally gzip behind
// an asyncWriter, in front of a trackingWriter that commits the headers
// with the first byte.
type response struct {
	dst   *trackingWriter
	zw    *gzip.Writer
	async *asyncWriter
	sink  io.Writer
}

func (r *Relay) newResponse(w http.ResponseWriter, req *http.Request, out negotiated) *response {
	gz := acceptsGzip(req)
	resp := &response{dst: &trackingWriter{w: w, started: func() {
		h := w.Header()
		h.Set("Content-Type", out.contentType)
		if gz {
			h.Set("Content-Encoding", "gzip")
		}
		h.Set("Vary", "Accept-Encoding")
		w.WriteHeader(http.StatusOK)
	}}}
	resp.sink = resp.dst
	if gz {
		if zw, ok := r.gzips.Get().(*gzip.Writer); ok {
			zw.Reset(resp.dst)
			resp.zw = zw
		} else {
			resp.zw = newGzipWriter(resp.dst)
		}
		resp.async = newAsyncWriter(resp.zw)
		resp.sink = resp.async
	}
	return resp
}

// finish flushes a response; ok says whether its body is complete.
func (r *Relay) finish(resp *response, ok bool) error {
	var err error
	if resp.async != nil {
		err = resp.async.Close()
		if err == nil && ok {
			err = resp.zw.Close()
		}
		if err == nil {
			resp.zw.Reset(io.Discard)
			r.gzips.Put(resp.zw)
		}
	}
	if err == nil && ok && !resp.dst.wrote {
		// An empty exposition is valid; commit the headers anyway.
		resp.dst.started()
	}
	return err
}
