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
	"encoding/binary"
	"fmt"
)

// The frame header, as yamux' spec.md defines it: version (8 bits), type
// (8), flags (16), stream id (32), length (32), big-endian.
const (
	headerLen     = 12
	protoVersion  = 0
	typeData      = 0
	typeWindowUpd = 1
	typePing      = 2
	typeGoAway    = 3

	flagSYN = 1
	flagACK = 2
	flagFIN = 4
	flagRST = 8

	// goAwayProtocolError is the code of a GoAway that says the peer broke
	// the protocol.
	goAwayProtocolError = 1

	// initialWindow is the window every stream starts with, each way,
	// before any window update.
	initialWindow = 256 << 10
)

// header is one frame header.
type header [headerLen]byte

func (h *header) version() uint8 { return h[0] }
func (h *header) typ() uint8     { return h[1] }
func (h *header) flags() uint16  { return binary.BigEndian.Uint16(h[2:4]) }
func (h *header) stream() uint32 { return binary.BigEndian.Uint32(h[4:8]) }
func (h *header) length() uint32 { return binary.BigEndian.Uint32(h[8:12]) }

func (h *header) encode(typ uint8, flags uint16, stream, length uint32) {
	h[0] = protoVersion
	h[1] = typ
	binary.BigEndian.PutUint16(h[2:4], flags)
	binary.BigEndian.PutUint32(h[4:8], stream)
	binary.BigEndian.PutUint32(h[8:12], length)
}

func (h *header) String() string {
	return fmt.Sprintf("version %d, type %d, flags %#x, stream %d, length %d", h.version(), h.typ(), h.flags(), h.stream(), h.length())
}
