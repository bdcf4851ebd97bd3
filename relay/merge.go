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
	"io"
	"slices"
	"strings"
	"sync"
)

// The aggregate endpoint's k-way merge, shared by text and OpenMetrics
// (segments, segment.go) and protobuf (frames, pbsegment.go): each
// exporter's relayed output comes as batches of parts in family-name
// order, and the merge writes the parts of all exporters by name, joining
// same-named ones as the part kind says.

// batch is consecutive parts of one exporter's output, in buf.
type batch[P any] struct {
	buf   []byte
	parts []P
	// aux is a buffer of the writer that fills batches, passed on with
	// the last batch so that it is pooled too.
	aux []byte
}

// feed carries one exporter's batches to the merge, and the batches the
// merge is done with back, so that their buffers and part slices are
// filled again. Between responses the batches wait in pool: without it a
// response allocated buffers about twice the size of its output, which on
// node_exporter's payload cost more than cutting the output into families.
type feed[P any] struct {
	ch   chan *batch[P]
	free chan *batch[P]
	pool *sync.Pool // of *batch[P], nil for none
	cur  *batch[P]  // the batch at hand in the merge
	rest []P        // its parts not merged yet
}

// feedBatches is how many batches a feed holds on its way to the merge;
// as many again wait to be reused, and one more is being filled.
const feedBatches = 2

// maxPooledBatch is the largest buffer a batch keeps in the pool: a batch
// is about a write of the relay, but a long line or a large protobuf frame
// makes one larger, and that should not stay around.
const maxPooledBatch = 4 * chunkBytes

func newFeed[P any](pool *sync.Pool) *feed[P] {
	return &feed[P]{ch: make(chan *batch[P], feedBatches), free: make(chan *batch[P], feedBatches+1), pool: pool}
}

// send passes b to the merge, or gives up when ctx ends.
func (f *feed[P]) send(ctx context.Context, b *batch[P]) error {
	select {
	case f.ch <- b:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// reuse hands out a batch the merge is done with, emptied, one from the
// pool, or a new one.
func (f *feed[P]) reuse() *batch[P] {
	var b *batch[P]
	select {
	case b = <-f.free:
	default:
		if f.pool != nil {
			b, _ = f.pool.Get().(*batch[P])
		}
		if b == nil {
			return &batch[P]{}
		}
	}
	b.buf, b.parts, b.aux = b.buf[:0], b.parts[:0], b.aux[:0]
	return b
}

// put offers b, which nobody uses any more, to the pool.
func (f *feed[P]) put(b *batch[P]) {
	if f.pool != nil && cap(b.buf)+cap(b.aux) <= maxPooledBatch {
		f.pool.Put(b)
	}
}

// release puts the batches the feed holds into the pool, once the merge
// and the relay are done with it.
func (f *feed[P]) release() {
	if f.cur != nil {
		f.put(f.cur)
		f.cur, f.rest = nil, nil
	}
	for {
		select {
		case b := <-f.free:
			f.put(b)
		default:
			return
		}
	}
}

// advance makes sure a part is at hand, receiving batches as needed and
// offering the ones merged for reuse; false says the exporter is done.
func (f *feed[P]) advance() bool {
	for len(f.rest) == 0 {
		if f.cur != nil {
			select {
			case f.free <- f.cur:
			default:
				f.put(f.cur)
			}
			f.cur = nil
		}
		b, ok := <-f.ch
		if !ok {
			return false
		}
		f.cur, f.rest = b, b.parts
	}
	return true
}

// drain receives what is left, so that the sender sees its context end.
func (f *feed[P]) drain() {
	for range f.ch {
	}
}

// joiner is what the merge needs of one kind of part. The merge hands it
// the head parts of one name, one exporter after the other, then asks for
// the group's output.
type joiner[P any] interface {
	// name is the family name of a part.
	name(p *P) string
	// add takes the part p of source s, in buf. cont says the family
	// before was of this name (the same family, cut into parts), repeated
	// that a family of this name was written earlier and ended.
	add(s *source, p *P, buf []byte, cont, repeated bool)
	// appendGroup appends the group's output to out, and reports whether
	// it wrote a family with metadata, which may not come again.
	appendGroup(out []byte) ([]byte, bool)
}

// mergeFeeds writes the parts of the feeds in name order, joining
// same-named ones with j, and then tail. feed gives a source's feed.
func mergeFeeds[P any](r *Relay, sources []*source, feed func(*source) *feed[P], j joiner[P], w io.Writer, tail string) error {
	live := make([]*source, 0, len(sources))
	for _, s := range sources {
		if feed(s).advance() {
			live = append(live, s)
		}
	}
	scratch := r.mergeScratch()
	defer r.mergeScratches.Put(scratch)
	written := scratch.written
	out := scratch.out[:0]
	defer func() {
		if cap(out) <= maxPooledBatch {
			scratch.out = out[:0]
		}
	}()
	// The name of the last family written with metadata, copied: a part's
	// name is in its batch, which is filled again once merged (partName).
	last := scratch.last[:0]
	defer func() { scratch.last = last[:0] }()
	group := scratch.group[:0]
	defer func() {
		clear(group[:cap(group)]) // the pool keeps no source
		scratch.group = group[:0]
	}()
	for len(live) > 0 {
		// The group: the sources whose head part has the least name, in
		// their order, found with one comparison per source.
		group = group[:0]
		var name string
		for _, s := range live {
			n := j.name(&feed(s).rest[0])
			if len(group) > 0 {
				c := strings.Compare(n, name)
				if c > 0 {
					continue
				}
				if c < 0 {
					group = group[:0]
				}
			}
			name = n
			group = append(group, s)
		}
		cont := string(last) == name
		above := written.above(name)
		repeated := !cont && !above && written.has(name)
		for _, s := range group {
			f := feed(s)
			j.add(s, &f.rest[0], f.cur.buf, cont, repeated)
			f.rest = f.rest[1:]
		}
		var meta bool
		if out, meta = j.appendGroup(out); meta {
			written.insert(name, above)
			last = append(last[:0], name...)
		}
		if len(out) >= flushBytes {
			if _, err := w.Write(out); err != nil {
				return err
			}
			out = out[:0]
		}
		ended := false
		for _, s := range group {
			if !feed(s).advance() {
				ended = true
			}
		}
		if ended {
			live = slices.DeleteFunc(live, func(s *source) bool { return len(feed(s).rest) == 0 })
		}
	}
	out = append(out, tail...)
	if len(out) > 0 {
		_, err := w.Write(out)
		return err
	}
	return nil
}

// mergeScratch is what a merge allocates per response: the names it
// wrote and its output buffer. Relay.mergeScratches keeps them between
// responses.
type mergeScratch struct {
	written *nameSet
	out     []byte
	group   []*source // the sources of the name at hand
	last    []byte
}

// maxPooledNames is the most names a pooled nameSet may have held: its
// list or map keeps its size when emptied.
const maxPooledNames = 1 << 14

// mergeScratch hands out the scratch of a merge, emptied.
func (r *Relay) mergeScratch() *mergeScratch {
	if m, ok := r.mergeScratches.Get().(*mergeScratch); ok && m.written.n <= maxPooledNames {
		m.written.reset(r.maxNames)
		return m
	}
	return &mergeScratch{written: newNameSet(r.maxNames), out: make([]byte, 0, 2*flushBytes)}
}
