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

// Package gzsplice builds a gzip member from pieces compressed apart: raw
// deflate segments that each end in a sync flush, so that the stream is
// byte aligned between them, and stored blocks spliced in between. The
// member's CRC-32 is combined from the pieces' CRCs, so nothing is
// compressed or checksummed twice.
package gzsplice

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
)

// Member is a gzip member being assembled. Its zero value is not usable:
// start one with New.
type Member struct {
	pieces [][]byte
	crc    uint32
	size   int
}

// New starts a member with room for n pieces besides header and trailer.
func New(n int) Member {
	pieces := make([][]byte, 0, n+2)
	// Header: magic, CM=deflate, no flags, no mtime, XFL=0, OS=unknown.
	pieces = append(pieces, []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255})
	return Member{pieces: pieces}
}

// Add appends a piece of raw deflate, byte aligned at both ends (a sync
// flush or a stored block), whose data has length size and IEEE CRC-32
// crc. The piece is kept, not copied.
func (m *Member) Add(piece []byte, crc uint32, size int) {
	m.pieces = append(m.pieces, piece)
	m.crc = crc32Combine(m.crc, crc, size)
	m.size += size
}

// Finish appends the trailer and returns the member in pieces, the length
// of its data and its own length. The last piece added must have ended the
// deflate stream (a final block).
func (m *Member) Finish() (pieces [][]byte, size, gzSize int) {
	trailer := binary.LittleEndian.AppendUint32(nil, m.crc)
	m.pieces = append(m.pieces, binary.LittleEndian.AppendUint32(trailer, uint32(m.size)))
	for _, p := range m.pieces {
		gzSize += len(p)
	}
	return m.pieces, m.size, gzSize
}

// Stored returns data as a stored (uncompressed) deflate block. The
// stream must be byte aligned where it goes, which a sync flush guarantees.
func Stored(data string, final bool) []byte {
	hdr := byte(0)
	if final {
		hdr = 1
	}
	n := uint16(len(data))
	return append([]byte{hdr, byte(n), byte(n >> 8), ^byte(n), ^byte(n >> 8)}, data...)
}

// crc32Combine returns the IEEE CRC-32 of A followed by B from the CRC of A,
// the CRC of B and the length of B. CRC-32 is linear over GF(2): the CRC of
// A shifted by len(B) zero bytes is crcA times x^(8·len(B)) modulo the
// polynomial, and the conditioning (initial value and final XOR) cancels
// between the three CRCs.
func crc32Combine(crcA, crcB uint32, lenB int) uint32 {
	if lenB <= 0 {
		return crcA
	}
	return gf2MulModP(xPow8n(uint64(lenB)), crcA) ^ crcB
}

// The CRC-32 polynomial in the reflected bit order hash/crc32 uses: the
// coefficient of x^0 is the most significant bit.
const (
	crcPoly = 0xedb88320
	gf2One  = 1 << 31 // the polynomial 1
)

// gf2MulModP multiplies two polynomials modulo the CRC-32 polynomial.
func gf2MulModP(a, b uint32) uint32 {
	var p uint32
	for m := uint32(gf2One); m != 0; m >>= 1 {
		if a&m != 0 {
			p ^= b
		}
		// b *= x
		if b&1 != 0 {
			b = b>>1 ^ crcPoly
		} else {
			b >>= 1
		}
	}
	return p
}

// xPow8n returns x^(8n) modulo the CRC-32 polynomial by square and multiply.
func xPow8n(n uint64) uint32 {
	result := uint32(gf2One)
	sq := uint32(gf2One >> 8) // x^8
	for ; n != 0; n >>= 1 {
		if n&1 != 0 {
			result = gf2MulModP(result, sq)
		}
		sq = gf2MulModP(sq, sq)
	}
	return result
}

// Level is the deflate level of the segments. On http_sd JSON
// of 100,000 agents level 2 deflates in the time of BestSpeed (level 1 has
// an encoder of its own) to 3.8 instead of 4.5 MB, and inflates faster;
// level 5 would save another 0.6 MB for twice the time
// (BenchmarkSegmentDeflateLevels).
const Level = 2

// Deflater compresses data into segments, reusing its
// compressor (about a megabyte of state) and output buffer between calls.
type Deflater struct {
	w   *flate.Writer
	buf bytes.Buffer
}

// Deflate returns data as raw deflate ending in a sync flush, in a slice of
// its own exact size.
func (d *Deflater) Deflate(data []byte) []byte {
	d.buf.Reset()
	if d.w == nil {
		w, err := flate.NewWriter(&d.buf, Level)
		if err != nil {
			panic(err) // only for an invalid level, which is a constant here
		}
		d.w = w
	} else {
		d.w.Reset(&d.buf)
	}
	_, _ = d.w.Write(data) // writes to a bytes.Buffer cannot fail
	_ = d.w.Flush()
	return bytes.Clone(d.buf.Bytes())
}
