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

package gzsplice

import (
	"bytes"
	"compress/gzip"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
)

// TestCRC32Combine checks the combination used for the gzip trailer against
// hash/crc32 over the concatenation.
func TestCRC32Combine(t *testing.T) {
	rnd := rand.New(rand.NewPCG(1, 2))
	for _, lens := range [][2]int{{0, 0}, {0, 5}, {5, 0}, {1, 1}, {3, 1000}, {1000, 3}, {70000, 1 << 20}} {
		a, b := make([]byte, lens[0]), make([]byte, lens[1])
		for i := range a {
			a[i] = byte(rnd.Uint32())
		}
		for i := range b {
			b[i] = byte(rnd.Uint32())
		}
		want := crc32.ChecksumIEEE(append(append([]byte(nil), a...), b...))
		if got := crc32Combine(crc32.ChecksumIEEE(a), crc32.ChecksumIEEE(b), len(b)); got != want {
			t.Errorf("lengths %v: combined %08x, want %08x", lens, got, want)
		}
	}
}

// TestMember_Gunzips: a member spliced from deflate segments and stored
// blocks is one gzip member that gzip.Reader inflates to the data in order,
// checking the combined CRC and length in the trailer.
func TestMember_Gunzips(t *testing.T) {
	tests := []struct {
		name     string
		segments []string
	}{
		{"no segments", nil},
		{"one segment", []string{"{\"targets\":[\"a:1\"]}"}},
		{"many segments", []string{strings.Repeat("x", 70000), "", "y", strings.Repeat("{}", 1000)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d Deflater
			m := New(2*len(tt.segments) + 1)
			want := "["
			m.Add(Stored("[", false), crc32.ChecksumIEEE([]byte("[")), 1)
			for i, seg := range tt.segments {
				if i > 0 {
					m.Add(Stored(",", false), crc32.ChecksumIEEE([]byte(",")), 1)
					want += ","
				}
				m.Add(d.Deflate([]byte(seg)), crc32.ChecksumIEEE([]byte(seg)), len(seg))
				want += seg
			}
			m.Add(Stored("]", true), crc32.ChecksumIEEE([]byte("]")), 1)
			want += "]"
			pieces, size, gzSize := m.Finish()
			member := bytes.Join(pieces, nil)
			if size != len(want) || gzSize != len(member) {
				t.Fatalf("sizes %d/%d, want %d/%d", size, gzSize, len(want), len(member))
			}
			zr, err := gzip.NewReader(bytes.NewReader(member))
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(zr)
			if err != nil {
				t.Fatalf("member does not inflate: %v", err)
			}
			if string(got) != want {
				t.Errorf("inflated %d bytes, want %d: %.40q", len(got), len(want), got)
			}
		})
	}
}
