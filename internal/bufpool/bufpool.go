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

// Package bufpool lends byte buffers that are held only while they hold
// data: a connection that waits between bursts gives its buffer back and
// borrows one again for the next burst, so idle connections hold none.
package bufpool

import "sync"

// Pool is a set of empty byte buffers to lend. Its zero value is ready to
// use; it must not be copied after first use.
type Pool struct {
	pool sync.Pool // of *[]byte, so that Put does not allocate
}

// Get returns an empty buffer: one given back earlier, or else a new one
// of capacity size.
func (p *Pool) Get(size int) *[]byte {
	if b, ok := p.pool.Get().(*[]byte); ok {
		return b
	}
	b := make([]byte, 0, size)
	return &b
}

// Put takes back a buffer its borrower no longer reads or writes.
func (p *Pool) Put(b *[]byte) {
	*b = (*b)[:0]
	p.pool.Put(b)
}
