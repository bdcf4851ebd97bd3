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
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
)

// Errors that describe a hostile or broken upstream body. Their text ends
// up in the one-line reason of a 502.
var (
	errBodyTooLarge  = errors.New("upstream body exceeds max_body_bytes")
	errLineTooLong   = errors.New("upstream line exceeds max_line_bytes")
	errFrameTooLarge = errors.New("upstream protobuf frame exceeds max_frame_bytes")
)

// capReader fails, rather than ending quietly like io.LimitReader, once more
// than max bytes were read: a truncated body must not look like a complete
// one.
type capReader struct {
	r   io.Reader
	n   int64
	max int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.n > c.max {
		return 0, errBodyTooLarge
	}
	if rem := c.max - c.n + 1; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.n > c.max {
		return n, errBodyTooLarge
	}
	return n, err
}

// chunker cuts a text or OpenMetrics stream into chunks for Prometheus'
// parsers, which need their whole input in one slice. The stream is read
// in blocks straight into one buffer, and a chunk is a window of that
// buffer ending at a line boundary, so the bytes are copied once on their
// way in and never per line.
//
// In aligned mode a chunk also ends where a metric family begins (at a
// group of # HELP, # TYPE or # UNIT lines), so a parser sees every family
// whole, with its type. A family larger than maxChunk is the exception: it
// is cut at a metric boundary and its metadata lines are replayed at the
// start of the next chunk, so each part parses with the right type. A
// summary or histogram metric is never cut, since its parts would read as
// two metrics: the chunk grows until the metric ends, up to maxMetric bytes
// (errMetricTooLarge). Only the starts of lines are inspected; the samples
// are left to the parser.
type chunker struct {
	r          io.Reader
	buf        []byte
	start, end int // unconsumed data is buf[start:end]
	eof        bool
	err        error // sticky read error

	target    int // chunk size aimed at
	maxChunk  int // aligned mode: a family part grows beyond this only to end a metric
	maxLine   int
	maxMetric int
	aligned   bool
	om        bool
	// noCut is how much of the buffered data was searched for a metric
	// boundary in vain, while one large metric keeps the chunk growing.
	noCut int

	replay  []byte // metadata lines of the family the next chunk continues
	scratch []byte // chunk with replayed lines in front
	done    bool
}

// minRead is the smallest read the chunker issues; smaller reads would
// cost a system call each for little data.
const minRead = 32 << 10

// reset prepares the chunker for a new stream, keeping its buffers.
func (c *chunker) reset(r io.Reader, maxLine, maxMetric, target int, aligned, om bool) {
	*c = chunker{
		r: r, buf: c.buf[:0], target: target, maxChunk: max(maxChunkBytes, target),
		maxLine: maxLine, maxMetric: maxMetric, aligned: aligned, om: om,
		replay: c.replay[:0], scratch: c.scratch[:0],
	}
}

// fill reads until at least want bytes are buffered or the stream ends.
func (c *chunker) fill(want int) error {
	for c.end-c.start < want && !c.eof {
		if c.err != nil {
			return c.err
		}
		if cap(c.buf)-c.end < minRead {
			n := c.end - c.start
			if need := max(want, n) + minRead; c.start > 0 && cap(c.buf) >= need {
				copy(c.buf[:cap(c.buf)], c.buf[c.start:c.end])
			} else {
				// Double while small, but never far beyond what is needed:
				// the buffer is most of the relay's memory.
				nb := make([]byte, max(need, min(2*cap(c.buf), c.maxChunk+minRead), 64<<10))
				copy(nb, c.buf[c.start:c.end])
				c.buf = nb
			}
			c.start, c.end = 0, n
		}
		n, err := c.r.Read(c.buf[c.end:cap(c.buf)])
		c.end += n
		switch {
		case errors.Is(err, io.EOF):
			c.eof = true
		case err != nil:
			c.err = err
		}
	}
	return nil
}

// Next returns the next chunk and how many metadata entries at its start
// are replayed from the previous chunk (aligned mode, oversized families).
// The chunk is valid until the following call; io.EOF ends the stream.
func (c *chunker) Next() ([]byte, int, error) {
	if c.done {
		return nil, 0, io.EOF
	}
	want, scanned, scannedEOF := c.target, 0, 0
	for {
		if err := c.fill(want); err != nil {
			return nil, 0, err
		}
		data := c.buf[c.start:c.end:c.end]
		if c.om {
			i := eofMarker(data, scannedEOF)
			scannedEOF = len(data)
			if i >= 0 {
				// Whatever follows # EOF must be nothing at all.
				for !c.eof && len(data)-i <= len("# EOF\n") {
					if err := c.fill(len(data) + 1); err != nil {
						return nil, 0, err
					}
					data = c.buf[c.start:c.end:c.end]
				}
				if rest := data[i:]; !bytes.Equal(bytes.TrimSuffix(rest, []byte("\n")), []byte("# EOF")) {
					return nil, 0, fmt.Errorf("%w: unexpected data after # EOF", errParse)
				}
				c.done = true
				return c.emit(data[:i], i)
			}
		}
		if c.eof {
			if len(data) > c.maxLine && bytes.LastIndexByte(data, '\n') < len(data)-1-c.maxLine {
				return nil, 0, errLineTooLong
			}
			if c.om {
				// The marker would have been found above.
				return nil, 0, fmt.Errorf("%w: OpenMetrics body does not end with # EOF", errParse)
			}
			c.done = true
			if len(data) == 0 {
				return nil, 0, io.EOF
			}
			if data[len(data)-1] != '\n' {
				// A final line without a newline; the parsers need one.
				c.buf = append(c.buf[:c.end], '\n')
				c.end++
				data = c.buf[c.start:c.end:c.end]
			}
			return c.emit(data, len(data))
		}
		nl := bytes.LastIndexByte(data, '\n')
		if len(data)-nl-1 > c.maxLine {
			return nil, 0, errLineTooLong
		}
		if nl < 0 {
			want = len(data) + minRead
			continue
		}
		lines := data[:nl+1]
		if !c.aligned {
			return c.emit(lines, len(lines))
		}
		if cut := familyStart(lines, scanned); cut > 0 {
			return c.emit(lines[:cut], cut)
		}
		scanned = len(lines)
		if len(data) < c.maxChunk {
			// One family so far: read on until the next one begins.
			want = len(data) + max(c.target, minRead)
			continue
		}
		chunk, replayed, more, err := c.emitOversized(lines)
		if more {
			// Inside one summary or histogram metric: read on.
			want = len(data) + max(c.target, minRead)
			continue
		}
		return chunk, replayed, err
	}
}

// emit returns chunk (a prefix of the buffered data of length consumed),
// with the replayed metadata in front when a family continues.
func (c *chunker) emit(chunk []byte, consumed int) ([]byte, int, error) {
	c.start += consumed
	c.noCut = 0
	if len(c.replay) == 0 {
		return chunk, 0, nil
	}
	replay := c.replay
	c.replay = c.replay[:0]
	if isMeta(chunk) {
		// A new family begins right here; nothing continues.
		return chunk, 0, nil
	}
	c.scratch = append(append(c.scratch[:0], replay...), chunk...)
	return c.scratch, metaEntries(replay, c.om), nil
}

// emitOversized cuts a family that outgrew maxChunk at its last metric
// boundary within lines and keeps its metadata for the next chunk. more
// says that lines end inside a summary or histogram metric with no
// boundary before: the caller reads on.
func (c *chunker) emitOversized(lines []byte) (chunk []byte, replayed int, more bool, err error) {
	meta := leadingMeta(lines)
	replay := meta
	if len(meta) == 0 {
		replay = c.replay
	}
	family, compound := familyOf(replay)
	cut := metricBoundary(lines, len(meta), c.noCut, family, compound)
	if cut <= len(meta) {
		if compound {
			if len(lines)-len(meta) > c.maxMetric {
				return nil, 0, false, errMetricTooLarge
			}
			c.noCut = len(lines)
			return nil, 0, true, nil
		}
		// Every series is a metric of its own here.
		cut = len(lines)
	}
	replay = append([]byte(nil), replay...)
	chunk, replayed, err = c.emit(lines[:cut], cut)
	c.replay = append(c.replay[:0], replay...)
	return chunk, replayed, false, err
}

// familyOf returns the name in the # TYPE line among meta and whether the
// type is one whose metrics have several series (summary, histogram,
// gauge histogram).
func familyOf(meta []byte) ([]byte, bool) {
	for len(meta) > 0 {
		line := meta
		if nl := bytes.IndexByte(meta, '\n'); nl >= 0 {
			line, meta = meta[:nl], meta[nl+1:]
		} else {
			meta = nil
		}
		rest, ok := bytes.CutPrefix(line, []byte("# TYPE "))
		if !ok {
			continue
		}
		name, typ := nameToken(rest)
		switch string(bytes.TrimSpace(typ)) {
		case "summary", "histogram", "gaugehistogram":
			return name, true
		}
		return name, false
	}
	return nil, false
}

// nameToken splits a metric name, bare or quoted, off the start of b. A
// quoted name is returned without its quotes (and with its escapes).
func nameToken(b []byte) (name, rest []byte) {
	if len(b) > 0 && b[0] == '"' {
		for i := 1; i < len(b); i++ {
			switch b[i] {
			case '\\':
				i++
			case '"':
				return b[1:i], b[i+1:]
			}
		}
		return b[1:], nil
	}
	// A loop, not bytes.IndexAny: names are short, and IndexAny builds
	// its set of bytes on every call.
	for i, c := range b {
		if c == ' ' || c == '\t' {
			return b[:i], b[i:]
		}
	}
	return b, nil
}

// belongs reports whether a sample name is one of the series of a summary
// or histogram family.
func belongs(family, name []byte) bool {
	rest, ok := bytes.CutPrefix(name, family)
	if !ok {
		return false
	}
	switch string(rest) {
	case "", "_bucket", "_sum", "_count", "_created", "_gsum", "_gcount":
		return true
	}
	return false
}

// eofMarker returns the offset of an OpenMetrics "# EOF" line in data, or
// -1. The marker only counts at the start of a line; data before from was
// searched already.
func eofMarker(data []byte, from int) int {
	if from == 0 && bytes.HasPrefix(data, []byte("# EOF")) && (len(data) == 5 || data[5] == '\n') {
		return 0
	}
	for off := max(from-6, 0); ; {
		i := bytes.Index(data[off:], []byte("\n# EOF"))
		if i < 0 {
			return -1
		}
		i += off + 1
		if end := i + 5; end == len(data) || data[end] == '\n' {
			return i
		}
		off = i
	}
}

// isMeta reports whether a line is # HELP, # TYPE or # UNIT.
func isMeta(line []byte) bool {
	if len(line) < 7 || line[0] != '#' || line[1] != ' ' {
		return false
	}
	switch string(line[2:7]) {
	case "HELP ", "TYPE ", "UNIT ":
		return true
	}
	return false
}

// familyStart returns the offset of the last group of metadata lines in
// lines (which ends with a newline) that starts at or after from, 0 when
// there is none after the start of lines.
func familyStart(lines []byte, from int) int {
	last := -1
	for off := max(from-1, 0); ; {
		j := bytes.Index(lines[off:], []byte("\n# "))
		if j < 0 {
			break
		}
		j += off + 1
		if isMeta(lines[j:]) && (last < 0 || !isMeta(lines[prevLine(lines, j):])) {
			last = j
		}
		off = j
	}
	if last <= 0 {
		return 0
	}
	// Step back over the metadata lines right before it.
	for last > 0 {
		k := prevLine(lines, last)
		if !isMeta(lines[k:]) {
			break
		}
		last = k
	}
	return last
}

// prevLine returns the start of the line before the one starting at s > 0.
func prevLine(lines []byte, s int) int {
	return bytes.LastIndexByte(lines[:s-1], '\n') + 1
}

// leadingMeta returns the metadata lines at the start of lines.
func leadingMeta(lines []byte) []byte {
	n := 0
	for n < len(lines) && isMeta(lines[n:]) {
		nl := bytes.IndexByte(lines[n:], '\n')
		if nl < 0 {
			break
		}
		n += nl + 1
	}
	return lines[:n]
}

// metaEntries counts the lines of meta the parser reports as metadata:
// text 0.0.4 has no # UNIT, it is a comment there.
func metaEntries(meta []byte, om bool) int {
	n := 0
	for len(meta) > 0 {
		if om || !bytes.HasPrefix(meta, []byte("# UNIT ")) {
			n++
		}
		nl := bytes.IndexByte(meta, '\n')
		if nl < 0 {
			break
		}
		meta = meta[nl+1:]
	}
	return n
}

// sampleName returns the metric name a sample line starts with, quoted
// names without their quotes, or nil for comments and blank lines.
func sampleName(line []byte) []byte {
	if len(line) == 0 || line[0] == '#' || line[0] == '\n' {
		return nil
	}
	if line[0] == '{' {
		if len(line) > 1 && line[1] == '"' {
			name, _ := nameToken(line[1:])
			return name
		}
		return nil
	}
	for i, c := range line {
		switch c {
		case '{', ' ', '\t', '\n':
			return line[:i]
		}
	}
	return line
}

// metricBoundary finds, scanning back from the end of lines to stop, the
// start of a line that begins a new metric of the family whose samples
// start at from: its name is that of the family's first sample line and
// the line before it has another name (a summary or histogram starts its
// next metric), or, in a summary or histogram family, it is no series of
// the family at all. 0 says there is none: families whose lines all share
// one name have no such line, and any line boundary is a metric boundary
// there.
func metricBoundary(lines []byte, from, stop int, family []byte, compound bool) int {
	first := sampleName(lines[from:])
	if first == nil {
		return 0
	}
	end := len(lines) - 1 // the final newline
	for end > from {
		s := bytes.LastIndexByte(lines[:end], '\n') + 1
		if s <= from || s < stop {
			return 0
		}
		name := sampleName(lines[s:])
		if compound && name != nil && !belongs(family, name) {
			return s
		}
		if bytes.Equal(name, first) && !bytes.Equal(sampleName(lines[prevLine(lines, s):]), first) {
			return s
		}
		end = s - 1
	}
	return 0
}

// readFrame reads one varint-delimited protobuf frame into buf. io.EOF at
// a frame boundary ends the stream cleanly. The length prefix is checked
// against max before anything is allocated, and the buffer grows with the
// bytes that actually arrive, so a prefix that lies costs nothing.
func readFrame(r *bufio.Reader, buf []byte, limit int) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: truncated protobuf frame length", errParse)
		}
		if errors.Is(err, errBodyTooLarge) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: protobuf frame length: %w", errParse, err)
	}
	if n > uint64(limit) {
		return nil, errFrameTooLarge
	}
	size := int(n)
	buf = buf[:0]
	for len(buf) < size {
		if cap(buf) == len(buf) {
			buf = slices.Grow(buf, min(max(cap(buf), 64<<10), size-len(buf)))
		}
		m, err := r.Read(buf[len(buf):min(cap(buf), size)])
		buf = buf[:len(buf)+m]
		if err != nil && len(buf) < size {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: truncated protobuf frame", errParse)
			}
			return nil, err
		}
	}
	return buf, nil
}
