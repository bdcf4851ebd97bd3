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
	"bytes"
	"io"
	"slices"
)

// segment is one family, or a part of one, in a batch of relayed text or
// OpenMetrics output: the aggregate endpoint merges exporters segment by
// segment without parsing their samples again.
type segment struct {
	name string // the family's name as its lines spell it, unquoted
	typ  string // the type of its # TYPE line, "" for none
	// meta says the segment starts the family with its metadata lines,
	// which end at metaEnd; a segment without is bare samples, or the
	// continuation of the family before it (cont).
	meta  bool
	cont  bool
	start int
	// metaEnd is where the samples start.
	metaEnd, end int
}

// segmentBatch is consecutive segments of one exporter's output.
type segmentBatch struct {
	buf  []byte
	segs []segment
}

// segmentPartBytes is how large a family grows before the segmenter passes
// on what it has of it, so that memory stays bounded by about a chunk per
// exporter however large a family is.
const segmentPartBytes = 64 << 10

// segmenter is the writer a relay of one exporter writes its text or
// OpenMetrics output to on the aggregate endpoint. It cuts the output into
// families by their lines, as the parsers tell families apart: a new
// family starts with metadata of another name, or with a sample that is
// none of the current family's series. It passes on each write's complete
// families in one batch; the family at the end is held until it ends or
// grows past segmentPartBytes.
//
// Each write is appended to buf whole and its lines are only looked at:
// a batch takes buf itself, and what is held over moves to a buffer the
// merge gave back (recycle), so that the output is copied once on its way
// to the batch.
type segmenter struct {
	emit func(*segmentBatch) error
	// recycle, when set, hands out buffers of batches the merge is done
	// with, or nil.
	recycle func() []byte
	// partBytes is segmentPartBytes, smaller in tests.
	partBytes int
	buf       []byte    // output not passed on yet, the current family last
	scanned   int       // buf up to here is complete lines, cut into segments
	segs      []segment // complete segments in buf
	cur       segment   // the current family, from cur.start in buf
	open      bool      // there is a current family
	samples   bool      // the current family has samples
}

func newSegmenter(emit func(*segmentBatch) error) *segmenter {
	return &segmenter{emit: emit, partBytes: segmentPartBytes}
}

func (s *segmenter) Write(b []byte) (int, error) {
	s.buf = append(s.buf, b...)
	s.lines()
	return len(b), s.pass(false)
}

// lines cuts the complete lines after scanned.
func (s *segmenter) lines() {
	for {
		nl := bytes.IndexByte(s.buf[s.scanned:], '\n')
		if nl < 0 {
			return
		}
		end := s.scanned + nl + 1
		if s.line(s.buf[s.scanned:end]) {
			s.scanned = end
			continue
		}
		// The line is left out.
		s.buf = append(s.buf[:s.scanned], s.buf[end:]...)
	}
}

// close passes on the rest.
func (s *segmenter) close() error {
	if s.scanned < len(s.buf) {
		s.buf = append(s.buf, '\n')
		s.lines()
	}
	return s.pass(true)
}

// line takes the output line l, which starts at scanned, and reports
// whether it is kept.
func (s *segmenter) line(l []byte) bool {
	if rest, ok := bytes.CutPrefix(l, []byte("# ")); ok {
		if bytes.HasPrefix(rest, []byte("EOF")) && len(bytes.TrimSpace(rest)) == 3 {
			return false // the aggregate writes its own
		}
		kind, rest, _ := bytes.Cut(rest, []byte(" "))
		switch string(kind) {
		case "HELP", "TYPE", "UNIT":
			name, typ := nameToken(rest)
			if !s.open || s.samples || s.cur.name != string(name) {
				s.startFamily(string(name), true)
			}
			if string(kind) == "TYPE" {
				s.cur.typ = string(bytes.TrimSpace(typ))
			}
			s.cur.metaEnd = s.scanned + len(l)
			return true
		}
		// Another comment belongs to the family at hand.
		if !s.open {
			s.startFamily("", false)
		}
		return true
	} else if !s.continues(l) {
		if name := sampleName(l); name != nil && (!s.open || !member(s.cur.name, name)) {
			s.startFamily(string(name), false)
		}
	}
	if !s.open {
		s.startFamily("", false)
	}
	s.samples = true
	return true
}

// continues reports cheaply whether a sample line is a series of the
// current family by its very name: it starts with the family's name and a
// label set or the value. Other lines take sampleName and member.
func (s *segmenter) continues(l []byte) bool {
	n := len(s.cur.name)
	if !s.open || n == 0 || len(l) <= n || string(l[:n]) != s.cur.name {
		return false
	}
	return l[n] == '{' || l[n] == ' '
}

func (s *segmenter) startFamily(name string, meta bool) {
	s.closeFamily()
	s.cur = segment{name: name, meta: meta, start: s.scanned, metaEnd: s.scanned}
	s.open, s.samples = true, false
}

func (s *segmenter) closeFamily() {
	if s.open && s.scanned > s.cur.start {
		s.cur.end = s.scanned
		s.segs = append(s.segs, s.cur)
	}
	s.open = false
}

// pass hands the complete segments on, and the current family as a part
// when it grew large or at the end.
func (s *segmenter) pass(final bool) error {
	var rest segment
	restOpen := s.open
	if final || (s.open && s.samples && s.scanned-s.cur.start >= s.partBytes) {
		rest = s.cur
		s.closeFamily()
	}
	if len(s.segs) == 0 {
		return nil
	}
	cut := s.scanned
	if s.open {
		cut = s.cur.start
	}
	var next []byte
	if s.recycle != nil {
		next = s.recycle()
	}
	batch := &segmentBatch{buf: s.buf[:cut], segs: append([]segment(nil), s.segs...)}
	s.buf = append(next[:0], s.buf[cut:]...)
	s.scanned -= cut
	s.segs = s.segs[:0]
	if s.open {
		s.cur.start -= cut
		s.cur.metaEnd -= cut
	} else if restOpen && !final {
		// The family goes on in the next part.
		s.cur = segment{name: rest.name, typ: rest.typ, cont: true}
		s.open, s.samples = true, true
	}
	return s.emit(batch)
}

// member reports whether a sample of this name is a series of the family:
// its name, or its name with the suffix of a counter, summary, histogram,
// gauge histogram or info series.
func member(family string, name []byte) bool {
	rest, ok := bytes.CutPrefix(name, []byte(family))
	if !ok {
		return false
	}
	switch string(rest) {
	case "", "_total", "_bucket", "_sum", "_count", "_created", "_gsum", "_gcount", "_info":
		return true
	}
	return false
}

// mergeSegments writes the families of all sources in name order, joining
// same-named ones: the first is written whole, the others without their
// metadata lines. It follows the rules given at serveAggregate.
func (r *Relay) mergeSegments(sources []*source, w io.Writer, om bool) error {
	advance := func(s *source) bool {
		for len(s.seg) == 0 {
			b, ok := <-s.parts
			if !ok {
				return false
			}
			s.giveBack(s.segBuf)
			s.seg, s.segBuf = b.segs, b.buf
		}
		return true
	}
	live := make([]*source, 0, len(sources))
	for _, s := range sources {
		if advance(s) {
			live = append(live, s)
		}
	}
	written := newNameSet(r.maxNames)
	var out []byte
	last := ""
	for len(live) > 0 {
		name := live[0].seg[0].name
		for _, s := range live[1:] {
			name = min(name, s.seg[0].name)
		}
		first, typ, meta := true, "", false
		for _, s := range live {
			seg := s.seg[0]
			if seg.name != name {
				continue
			}
			body := s.segBuf[seg.start:seg.end]
			samples := s.segBuf[seg.metaEnd:seg.end]
			switch {
			case seg.cont && s.dropping:
			case seg.cont:
				out = append(out, samples...)
			case seg.meta && last != name && written.has(name):
				s.dropping = true
				r.drop(s)
			case first:
				s.dropping = false
				if last == name {
					body = samples
				}
				out = append(out, body...)
				first, typ, meta = false, seg.typ, seg.meta
			case seg.typ != typ:
				s.dropping = true
				r.drop(s)
			default:
				s.dropping = false
				out = append(out, samples...)
			}
			s.seg = s.seg[1:]
		}
		if meta {
			written.add(name)
			last = name
		}
		if len(out) >= flushBytes {
			if _, err := w.Write(out); err != nil {
				return err
			}
			out = out[:0]
		}
		live = slices.DeleteFunc(live, func(s *source) bool { return !advance(s) })
	}
	if om {
		out = append(out, "# EOF\n"...)
	}
	if len(out) > 0 {
		_, err := w.Write(out)
		return err
	}
	return nil
}
