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
	"unsafe"
)

// segment is one family, or a part of one, in a batch of relayed text or
// OpenMetrics output: the aggregate endpoint merges exporters segment by
// segment without parsing their samples again.
type segment struct {
	name string // the family's name as its lines spell it, unquoted
	typ  string // the type of its # TYPE line, "" for none
	// nameStart and nameEnd place the name in the segmenter's names until
	// the segment is passed on with its name.
	nameStart, nameEnd int
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
type segmentBatch = batch[segment]

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
// The direct path tells the segmenter where its lines end and which are
// metadata (writeMarked); other writes are cut by reading their lines.
// Each write is appended to buf whole and its lines are only looked at:
// a batch takes buf and segs themselves, and what is held over moves to a
// batch the merge gave back (recycle), so that the output is copied once
// on its way to the batch.
type segmenter struct {
	emit func(*segmentBatch) error
	// recycle hands out an empty batch, one the merge is done with when
	// there is one.
	recycle func() *segmentBatch
	// partBytes is segmentPartBytes, smaller in tests.
	partBytes int
	buf       []byte    // output not passed on yet, the current family last
	scanned   int       // buf up to here is complete lines, cut into segments
	segs      []segment // complete segments in buf
	cur       segment   // the current family, from cur.start in buf
	open      bool      // there is a current family
	samples   bool      // the current family has samples
	// names holds the names of segs and cur one after the other: a batch
	// makes one string of them rather than one per family.
	names []byte
	// started says the buffers were taken from a recycled batch.
	started bool
}

func newSegmenter(emit func(*segmentBatch) error) *segmenter {
	return &segmenter{emit: emit, partBytes: segmentPartBytes, recycle: func() *segmentBatch { return &segmentBatch{} }}
}

func (s *segmenter) Write(b []byte) (int, error) {
	s.start()
	s.buf = append(s.buf, b...)
	s.lines()
	return len(b), s.pass(false)
}

// start takes the buffers of a recycled batch before the first write.
func (s *segmenter) start() {
	if !s.started {
		first := s.recycle()
		s.buf, s.segs, s.names = first.buf, first.parts, first.aux
		s.started = true
	}
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
		// The kinds of metadata are four letters and a space: no search
		// for the space.
		var kind []byte
		if len(rest) > 4 && rest[4] == ' ' {
			kind, rest = rest[:4], rest[5:]
		}
		switch string(kind) {
		case "HELP", "TYPE", "UNIT":
			name, typ := nameToken(rest)
			s.meta(name, string(kind) == "TYPE", typ, "", s.scanned+len(l))
			return true
		}
		// Another comment belongs to the family at hand.
		if !s.open {
			s.startFamily(nil, false)
		}
		return true
	}
	s.sample(l)
	return true
}

// meta takes a metadata line of family name that ends at end; for a
// # TYPE line, typ is the type as written or, when the writer told it, as
// a string (typString).
func (s *segmenter) meta(name []byte, isType bool, typ []byte, typString string, end int) {
	if !s.open || s.samples || string(s.curName()) != string(name) {
		s.startFamily(name, true)
	}
	if isType {
		if typString == "" {
			typString = typeString(bytes.TrimSpace(typ))
		}
		s.cur.typ = typString
	}
	s.cur.metaEnd = end
}

// sample takes the sample line l, which starts at scanned.
func (s *segmenter) sample(l []byte) {
	if !s.continues(l) {
		if name := sampleName(l); name != nil && (!s.open || !member(s.curName(), name)) {
			s.startFamily(name, false)
		}
	}
	if !s.open {
		s.startFamily(nil, false)
	}
	s.samples = true
}

// lineMark is a line the direct path wrote, so that the segmenter need
// not look for its end, nor read what kind of line it is.
type lineMark struct {
	end int // where the line ends in the buffer, after its newline
	// nameLen is the length of the family name after "# HELP " when it
	// is written bare, 0 when it must be read.
	nameLen int32
	// meta says it is a # HELP, # TYPE or # UNIT line; typ, for a # TYPE
	// line, is its type as an index into markTypes, markTypeRead when the
	// segmenter must read it.
	meta bool
	typ  uint8
}

// markTypes are the types a # TYPE line's mark gives by index: a small
// mark is quicker to write and to read than one with the type's string.
var markTypes = [...]string{"", "counter", "gauge", "histogram", "summary", "untyped", "unknown", "gaugehistogram", "info", "stateset"}

// markTypeRead is the typ of a # TYPE line whose type is none of
// markTypes.
const markTypeRead = uint8(len(markTypes))

// markType is the mark of a # TYPE line of type typ.
func markType(typ string) uint8 {
	switch typ {
	case "counter":
		return 1
	case "gauge":
		return 2
	case "histogram":
		return 3
	case "summary":
		return 4
	case "untyped":
		return 5
	case "unknown":
		return 6
	case "gaugehistogram":
		return 7
	case "info":
		return 8
	case "stateset":
		return 9
	}
	return markTypeRead
}

// markedWriter is a writer that takes the lines of a write marked: the
// direct path knows each line it writes, and the segmenter then only
// looks at the start of a sample line. It lends the direct path its
// buffer, so that the output is written where the segmenter keeps it
// rather than copied there.
type markedWriter interface {
	io.Writer
	// markedBuffer is the buffer the next write is to be appended to. Its
	// bytes up to its length are the writer's, and stay as they are.
	markedBuffer() []byte
	// writeMarked takes the buffer back, with a write appended to it
	// after from whose complete lines marks lists in order.
	writeMarked(buf []byte, from int, marks []lineMark) error
}

// metaPrefix is the length of "# HELP ", "# TYPE " and "# UNIT ".
const metaPrefix = len("# HELP ")

func (s *segmenter) markedBuffer() []byte {
	s.start()
	return s.buf
}

// writeMarked is Write of buf[from:], appended to the buffer markedBuffer
// lent. What the marks do not cover, or a write after an incomplete line,
// is cut by reading its lines as Write does.
func (s *segmenter) writeMarked(buf []byte, from int, marks []lineMark) error {
	s.start()
	s.buf = buf
	if s.scanned == from {
		s.marked(marks)
	}
	s.lines()
	return s.pass(false)
}

// marked cuts the lines marks lists, after scanned.
func (s *segmenter) marked(marks []lineMark) {
	buf := s.buf
	for _, m := range marks {
		end := m.end
		if end <= s.scanned || end > len(buf) || buf[end-1] != '\n' {
			return
		}
		l := buf[s.scanned:end]
		switch {
		case !m.meta:
			s.sample(l)
		case len(l) <= metaPrefix:
			return
		default:
			var name, typ []byte
			if n := int(m.nameLen); n > 0 && metaPrefix+n < len(l) {
				name = l[metaPrefix : metaPrefix+n]
			} else {
				name, typ = nameToken(l[metaPrefix:])
			}
			isType, typString := m.typ != 0, ""
			if m.typ < markTypeRead {
				typString = markTypes[m.typ]
			} else if m.nameLen > 0 {
				_, typ = nameToken(l[metaPrefix:])
			}
			s.meta(name, isType, typ, typString, end)
		}
		s.scanned = end
	}
}

// continues reports cheaply whether a sample line is a series of the
// current family by its very name: it starts with the family's name and a
// label set or the value. Other lines take sampleName and member.
func (s *segmenter) continues(l []byte) bool {
	if !s.open {
		return false
	}
	name := s.curName()
	n := len(name)
	if n == 0 || len(l) <= n || string(l[:n]) != string(name) {
		return false
	}
	return l[n] == '{' || l[n] == ' '
}

// curName is the current family's name, while there is one (open).
func (s *segmenter) curName() []byte {
	return s.names[s.cur.nameStart:s.cur.nameEnd]
}

func (s *segmenter) startFamily(name []byte, meta bool) {
	s.closeFamily()
	start := len(s.names)
	s.names = append(s.names, name...)
	// Field by field: the name is set only when the segment is passed on,
	// and writing it and the type anew cost more than the rest.
	c := &s.cur
	c.nameStart, c.nameEnd, c.meta, c.cont, c.start, c.metaEnd, c.end = start, len(s.names), meta, false, s.scanned, s.scanned, 0
	if c.typ != "" {
		c.typ = ""
	}
	s.open, s.samples = true, false
}

// typeString is a # TYPE line's type as a string, without allocating for
// the types the formats define.
func typeString(b []byte) string {
	switch string(b) {
	case "counter":
		return "counter"
	case "gauge":
		return "gauge"
	case "histogram":
		return "histogram"
	case "summary":
		return "summary"
	case "untyped":
		return "untyped"
	case "unknown":
		return "unknown"
	case "gaugehistogram":
		return "gaugehistogram"
	case "info":
		return "info"
	case "stateset":
		return "stateset"
	}
	return string(b)
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
	// The batch takes buf, segs and the names, and the next ones go on in
	// a batch the merge gave back, so that all three go back to the pool.
	var batch *segmentBatch
	if final {
		batch = &segmentBatch{buf: s.buf[:cut], parts: s.segs, aux: s.names}
		s.buf, s.segs, s.names = nil, nil, nil
	} else {
		batch = s.recycle()
		batch.buf, s.buf = s.buf[:cut], append(batch.buf[:0], s.buf[cut:]...)
		batch.parts, s.segs = s.segs, batch.parts[:0]
		batch.aux, s.names = s.names, batch.aux[:0]
	}
	// The names are read where the batch keeps them, without a copy: see
	// partName.
	names := batch.aux
	for i := range batch.parts {
		g := &batch.parts[i]
		g.name = partName(names[g.nameStart:g.nameEnd])
		g.nameStart, g.nameEnd = 0, 0
	}
	s.scanned -= cut
	if s.open {
		s.cur.start -= cut
		s.cur.metaEnd -= cut
		s.names = append(s.names, names[s.cur.nameStart:s.cur.nameEnd]...)
		s.cur.nameStart, s.cur.nameEnd = 0, len(s.names)
	} else if restOpen && !final {
		// The family goes on in the next part.
		s.names = append(s.names, names[rest.nameStart:rest.nameEnd]...)
		s.cur = segment{nameEnd: len(s.names), typ: rest.typ, cont: true}
		s.open, s.samples = true, true
	}
	return s.emit(batch)
}

// partName is the name of a part in the bytes of its batch, as a string
// that shares them. A response cut about 1,200 families a node_exporter
// into strings of their own, or one string per batch, and what it
// allocated so kept the garbage collector busy, which made the whole
// aggregate dearer. The bytes stay as they are while the batch is at the
// merge: a batch's buffers are filled again only once the merge is done
// with all its parts and gave it back (feed.advance), and the merge keeps
// no name past that (mergeFeeds and nameSet copy the ones they keep).
func partName(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// member reports whether a sample of this name is a series of the family:
// its name, or its name with the suffix of a counter, summary, histogram,
// gauge histogram or info series.
func member(family, name []byte) bool {
	rest, ok := bytes.CutPrefix(name, family)
	if !ok {
		return false
	}
	switch string(rest) {
	case "", "_total", "_bucket", "_sum", "_count", "_created", "_gsum", "_gcount", "_info":
		return true
	}
	return false
}

// segmentJoiner joins same-named segments for mergeFeeds: the first is
// written whole, the others without their metadata lines. It follows the
// rules given at serveAggregate.
type segmentJoiner struct {
	r      *Relay
	pieces [][]byte // the group's output
	// started says the group has its first family; typ and meta are that
	// family's.
	started, meta bool
	typ           string
}

func (j *segmentJoiner) name(seg *segment) string { return seg.name }

func (j *segmentJoiner) add(s *source, seg *segment, buf []byte, cont, repeated bool) {
	body := buf[seg.start:seg.end]
	samples := buf[seg.metaEnd:seg.end]
	switch {
	case seg.cont && s.dropping:
	case seg.cont:
		j.pieces = append(j.pieces, samples)
	case seg.meta && repeated:
		s.dropping = true
		j.r.drop(s)
	case !j.started:
		s.dropping = false
		if cont {
			body = samples
		}
		j.pieces = append(j.pieces, body)
		j.started, j.typ, j.meta = true, seg.typ, seg.meta
	case seg.typ != j.typ:
		s.dropping = true
		j.r.drop(s)
	default:
		s.dropping = false
		j.pieces = append(j.pieces, samples)
	}
}

func (j *segmentJoiner) appendGroup(out []byte) ([]byte, bool) {
	for _, p := range j.pieces {
		out = append(out, p...)
	}
	meta := j.meta
	j.pieces, j.started, j.meta, j.typ = j.pieces[:0], false, false, ""
	return out, meta
}

// mergeSegments writes the families of all sources in name order, joining
// same-named ones (segmentJoiner).
func (r *Relay) mergeSegments(sources []*source, w io.Writer, om bool) error {
	tail := ""
	if om {
		tail = "# EOF\n"
	}
	return mergeFeeds(r, sources, func(s *source) *feed[segment] { return s.segs }, &segmentJoiner{r: r}, w, tail)
}
