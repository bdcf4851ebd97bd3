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
	"context"
	"errors"
	"hash/maphash"
	"net/http"
	"sync"
	"time"
)

// aggregatePath serves every exporter merged into one exposition.
const aggregatePath = "/exporters/metrics"

// errAggregateUnlabeled is the reason the aggregate endpoint is off.
var errAggregateUnlabeled = errors.New("aggregate endpoint disabled: exporter_label is empty, so the series of several exporters would collide; scrape /exporters/<name>/metrics or set exporter_label")

// source is one exporter on the aggregate endpoint.
type source struct {
	exporter *exporter
	// fetched carries the format the exporter answered in, or false when
	// the fetch failed; decided carries the format of the response.
	fetched chan fetched
	decided chan negotiated
	frames  *feed[frame]   // protobuf responses
	segs    *feed[segment] // text and OpenMetrics responses
	// dropping is set while the parts of a dropped family come in.
	dropping bool
}

func newSource(r *Relay, e *exporter) *source {
	return &source{
		exporter: e, fetched: make(chan fetched, 1), decided: make(chan negotiated, 1),
		frames: newFeed[frame](&r.frameBatches), segs: newFeed[segment](&r.segmentBatches),
	}
}

type fetched struct {
	format Format
	ok     bool
}

// serveAggregate merges all exporters into one exposition. Exporters are
// scraped concurrently. Once every exporter answered (or failed), the
// response format is chosen as for one exporter: when all of them answered
// in one format the scraper takes, the response is in that format and each
// exporter's body is relayed as its own endpoint relays it, without
// conversion; otherwise it is the scraper's best format.
//
// The families are merged by name as they stream in: client libraries sort
// families by name, so a k-way merge joins same-named families from
// different exporters into one valid family while holding about one chunk
// per exporter in memory. In text and OpenMetrics, each exporter's relayed
// output is cut into families by their lines (segment.go) and written as
// it is; only a name that several exporters send costs more than a copy:
// its metadata is written once. In protobuf the output is cut into frames
// (pbsegment.go; the relay tells the framer where they are and what they
// hold), and only frames of a name several exporters send are
// written anew, their metrics joined. A family whose name comes again after other
// families were written (an unsorted upstream) is dropped and counted,
// since a text exposition may not repeat a family (bare samples without
// metadata may come again, see nameSet for the bound); so is a family
// whose type differs from the one already merged under its name. Exporters
// that fail are left out and reported in the relay metrics; one that fails
// halfway leaves the families it sent before.
//
// Without an exporter label the series of two exporters could be the same
// series, which Prometheus would count as duplicates and partly drop, so
// the endpoint then serves only a relay of a single exporter and answers
// 404 with the reason otherwise.
func (r *Relay) serveAggregate(w http.ResponseWriter, req *http.Request) {
	if r.cfg.Label() == "" && len(r.names) > 1 {
		http.Error(w, errAggregateUnlabeled.Error(), http.StatusNotFound)
		return
	}
	accepted := parseAccept(req.Header.Get("Accept"))
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()

	sources := make([]*source, 0, len(r.names))
	var wg sync.WaitGroup
	for _, name := range r.names {
		s := newSource(r, r.exporters[name])
		sources = append(sources, s)
		wg.Go(func() { s.run(ctx, req, accepted) })
	}
	defer func() {
		wg.Wait()
		for _, s := range sources {
			s.frames.release()
			s.segs.release()
		}
	}()

	neg := decideAggregate(accepted, sources)
	for _, s := range sources {
		s.decided <- neg
	}
	resp := r.newResponse(w, req, neg)
	var err error
	if neg.format == FormatProtobuf {
		err = r.mergeFrames(sources, resp.sink)
	} else {
		err = r.mergeSegments(sources, resp.sink, neg.format == FormatOpenMetrics)
	}
	if ferr := r.finish(resp, err == nil); err == nil {
		err = ferr
	}
	if err != nil {
		cancel()
		r.logger.Debug("Writing the aggregate response failed", "err", err)
		// Drain, so every source sees the cancellation and ends.
		for _, s := range sources {
			s.frames.drain()
			s.segs.drain()
		}
		if resp.dst.wrote {
			panic(http.ErrAbortHandler)
		}
	}
}

// decideAggregate waits for every source's upstream answer and picks the
// response format: the exporters' own when they all answered in one that
// the scraper takes, the scraper's best otherwise.
func decideAggregate(accepted acceptable, sources []*source) negotiated {
	var format Format
	same, ok := true, false
	for _, s := range sources {
		f := <-s.fetched
		if !f.ok {
			continue
		}
		if ok && f.format != format {
			same = false
		}
		format, ok = f.format, true
	}
	if ok && same {
		return accepted.answer(format)
	}
	return accepted.best()
}

// run relays one exporter into its channels.
func (s *source) run(ctx context.Context, req *http.Request, accepted acceptable) {
	defer close(s.frames.ch)
	defer close(s.segs.ch)
	e := s.exporter
	m := e.relay.metrics
	start := time.Now()
	timeout := scrapeTimeout(req, e.timeout)
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p := e.pipeline()
	p.setLabel(e.relay.cfg.Label())
	up, err := e.fetch(fctx, p, accepted.upstreamAccept(), timeout)
	if err != nil {
		s.fetched <- fetched{}
	} else {
		defer up.closer.Close()
		s.fetched <- fetched{format: up.format, ok: true}
		var neg negotiated
		select {
		case neg = <-s.decided:
		case <-fctx.Done():
			err = fctx.Err()
		}
		if err == nil && neg.format == FormatProtobuf {
			fr := newFramer(func(b *frameBatch) error { return s.frames.send(fctx, b) })
			fr.recycle, fr.release = s.frames.reuse, s.frames.put
			err = p.relay(up.body, up.format, up.ct, neg.format, neg.esc, fr)
			if err == nil {
				err = fr.close()
			}
		} else if err == nil {
			sg := newSegmenter(func(b *segmentBatch) error { return s.segs.send(fctx, b) })
			sg.recycle = s.segs.reuse
			err = p.relay(up.body, up.format, up.ct, neg.format, neg.esc, sg)
			if err == nil {
				err = sg.close()
			}
		}
	}
	if m != nil {
		m.ScrapeDuration.WithLabelValues(e.cfg.Name).Observe(time.Since(start).Seconds())
	}
	if err != nil {
		_ = e.recordFailure(fctx, err) // the aggregate leaves a failed exporter out
		e.release(p)
		return
	}
	e.succeeded()
	if m != nil {
		m.Up.WithLabelValues(e.cfg.Name).Set(1)
		m.Samples.WithLabelValues(e.cfg.Name).Add(float64(p.samples))
	}
	e.release(p)
}

// maxWrittenNames bounds how many family names the aggregate endpoint
// remembers per response to drop repeated families.
const maxWrittenNames = 1 << 17

// nameSet remembers the names of the families an aggregate response wrote,
// by 64-bit hash, so that memory does not grow with the names' lengths, and
// at most limit of them: past that a family that comes again is written
// again (Prometheus reads it; strict parsers would refuse the repeated
// metadata) rather than memory grown without bound.
//
// Exporters sort their families by name, so the names usually come in
// ascending order: a name above the greatest so far (max) was not written,
// without a look-up, and the hashes wait in a list until a name comes that
// is not above it. Only then are they put into a map.
type nameSet struct {
	seed   maphash.Seed
	hashes []uint64            // the names' hashes, until m is built
	m      map[uint64]struct{} // nil until a look-up needs it
	n      int                 // names added
	max    []byte              // the greatest name added, copied
	limit  int
}

func newNameSet(limit int) *nameSet {
	return &nameSet{seed: maphash.MakeSeed(), limit: limit}
}

// reset forgets all names, keeping the list's memory.
func (s *nameSet) reset(limit int) {
	s.hashes, s.m, s.n, s.max, s.limit = s.hashes[:0], nil, 0, s.max[:0], limit
}

// above reports whether name is above every name added, so certainly
// not one of them.
func (s *nameSet) above(name string) bool {
	return s.n == 0 || name > string(s.max)
}

func (s *nameSet) add(name string) {
	s.insert(name, s.above(name))
}

// insert adds name, of which above said above: the merge asks above
// anyway, and a comparison of names, which often share a long prefix, is
// spared.
func (s *nameSet) insert(name string, above bool) {
	if s.n >= s.limit {
		return
	}
	s.n++
	if above {
		s.max = append(s.max[:0], name...)
	}
	h := maphash.String(s.seed, name)
	if s.m == nil {
		s.hashes = append(s.hashes, h)
		return
	}
	s.m[h] = struct{}{}
}

func (s *nameSet) has(name string) bool {
	if s.above(name) {
		return false
	}
	if s.m == nil {
		s.m = make(map[uint64]struct{}, len(s.hashes))
		for _, h := range s.hashes {
			s.m[h] = struct{}{}
		}
		s.hashes = nil
	}
	_, ok := s.m[maphash.String(s.seed, name)]
	return ok
}

func (r *Relay) drop(s *source) {
	if r.metrics != nil {
		r.metrics.Dropped.WithLabelValues(s.exporter.cfg.Name).Inc()
	}
}
