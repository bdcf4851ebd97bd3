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

package bufpool

import "testing"

func TestPool_LendsEmptyBuffers(t *testing.T) {
	var p Pool
	b := p.Get(64)
	if len(*b) != 0 || cap(*b) != 64 {
		t.Fatalf("new buffer: len %d cap %d, want 0 and 64", len(*b), cap(*b))
	}
	*b = append(*b, "scrape"...)
	p.Put(b)
	if len(*b) != 0 {
		t.Errorf("a buffer given back keeps %d bytes, want none", len(*b))
	}
	// sync.Pool may drop what it was given (it does at random under the
	// race detector), so whichever buffer comes back must be empty.
	if again := p.Get(64); len(*again) != 0 {
		t.Errorf("lent a buffer holding %d bytes, want an empty one", len(*again))
	}
}
