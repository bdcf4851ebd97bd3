package relay

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// maxFrameBytes bounds one protobuf frame (one metric family). The length
// prefix is checked before anything is allocated.
const maxFrameBytes = 16 << 20

// Errors that describe a hostile or broken upstream body. Their text ends
// up in the one-line reason of a 502.
var (
	errBodyTooLarge  = errors.New("upstream body exceeds max_body_bytes")
	errLineTooLong   = errors.New("upstream line exceeds max_line_bytes")
	errFrameTooLarge = errors.New("upstream protobuf frame exceeds the frame size limit")
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

// lineChunker cuts a text or OpenMetrics stream into chunks that each hold
// one metric family (or part of a very large one), so that Prometheus'
// parsers, which need their whole input in memory, see one family at a time.
// It only looks at the start of comment lines to find family boundaries;
// samples are left to the parser.
type lineChunker struct {
	r  *bufio.Reader
	om bool
	// minChunk lets several small families share one chunk, which saves a
	// parser set-up per family; 0 means one family per chunk.
	minChunk int
	chunk    []byte
	next     []byte // first line of the following chunk
	family   []byte
	done     bool
}

func newLineChunker(r io.Reader, maxLine int, om bool, minChunk int) *lineChunker {
	return &lineChunker{r: bufio.NewReaderSize(r, maxLine+1), om: om, minChunk: minChunk}
}

// readLine returns the next line including its newline. The slice is only
// valid until the next call.
func (c *lineChunker) readLine() ([]byte, error) {
	line, err := c.r.ReadSlice('\n')
	switch {
	case errors.Is(err, bufio.ErrBufferFull):
		return nil, errLineTooLong
	case errors.Is(err, io.EOF) && len(line) > 0:
		// A final line without a newline; the parsers need one.
		return append(line, '\n'), nil
	}
	return line, err
}

// Next returns the next chunk, or io.EOF after the last one. The chunk is
// valid until the following call.
func (c *lineChunker) Next() ([]byte, error) {
	if c.done {
		return nil, io.EOF
	}
	c.chunk = append(c.chunk[:0], c.next...)
	c.next = c.next[:0]
	for {
		line, err := c.readLine()
		if errors.Is(err, io.EOF) {
			c.done = true
			return c.result()
		}
		if err != nil {
			return nil, err
		}
		if c.om && bytes.Equal(bytes.TrimRight(line, "\n"), []byte("# EOF")) {
			c.done = true
			return c.result()
		}
		if name, ok := metadataName(line); ok {
			if len(c.chunk) > c.minChunk && !bytes.Equal(name, c.family) {
				c.next = append(c.next, line...)
				c.family = append(c.family[:0], name...)
				return c.chunk, nil
			}
			c.family = append(c.family[:0], name...)
		}
		c.chunk = append(c.chunk, line...)
		if len(c.chunk) >= maxChunkBytes {
			return c.chunk, nil
		}
	}
}

func (c *lineChunker) result() ([]byte, error) {
	if len(c.chunk) == 0 {
		return nil, io.EOF
	}
	return c.chunk, nil
}

// metadataName returns the metric name of a # HELP, # TYPE or # UNIT line.
func metadataName(line []byte) ([]byte, bool) {
	if len(line) < 8 || line[0] != '#' || line[1] != ' ' {
		return nil, false
	}
	switch string(line[2:7]) {
	case "HELP ", "TYPE ", "UNIT ":
	default:
		return nil, false
	}
	rest := line[7:]
	if len(rest) > 0 && rest[0] == '"' {
		// A quoted UTF-8 name; its end is the next unescaped quote.
		for i := 1; i < len(rest); i++ {
			switch rest[i] {
			case '\\':
				i++
			case '"':
				return rest[:i+1], true
			}
		}
		return rest, true
	}
	end := bytes.IndexAny(rest, " \t\n")
	if end < 0 {
		end = len(rest)
	}
	return rest[:end], true
}

// readFrame reads one varint-delimited protobuf frame into buf. io.EOF at
// a frame boundary ends the stream cleanly.
func readFrame(r *bufio.Reader, buf []byte) ([]byte, error) {
	n, err := binary.ReadUvarint(r)
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, fmt.Errorf("read protobuf frame length: %w", err)
	}
	if n > maxFrameBytes {
		return nil, errFrameTooLarge
	}
	if cap(buf) < int(n) {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, errors.New("upstream protobuf frame is truncated")
		}
		return nil, err
	}
	return buf, nil
}
