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

package httpsd

import (
	"bytes"
	"compress/flate"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd/internal/gzsplice"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
)

// Cache serves http_sd bodies. The registry is split in shards; each cached
// view keeps one compressed fragment per shard and re-serializes only the
// shards whose generation moved, so a change among 100,000 agents costs a few
// hundred agents' worth of JSON.
//
// Fragments are kept only as raw deflate segments, never as JSON: at 100,000
// agents the JSON is 80 MiB and its deflate 4 MiB. A gzip response is the
// segments spliced into one gzip member; an identity response (what
// Prometheus asks for: its http_sd client disables compression) inflates them
// while writing, which costs less CPU than moving the same bytes through TLS.
//
// A view of a sharded filter (?shards=N) holds the bodies of all N scrape
// shards: a stale registry shard is walked once and its agents partitioned
// among the scrape shards, so N Prometheus servers cost one rebuild, not N.
type Cache struct {
	reg     *registry.Registry
	metrics *collector.Server

	mu    sync.Mutex
	views map[string]*sdView
	clock uint64 // logical clock for least-recently-used eviction
	// epoch and version make ETags: version counts body content changes
	// across all views, epoch (random) tells this cache from an earlier
	// process or another replica, whose versions count differently.
	epoch   string
	version uint64
	// scratch is where a fragment's JSON is serialized before it is
	// deflated; byPart collects a registry shard's agents per scrape shard.
	scratch  []byte
	byPart   [][]*registry.Record
	changed  []bool
	deflater gzsplice.Deflater
}

// Bounds of the cached views: a view per distinct filter and shard count,
// evicted least recently used first while there are more than maxViews or
// their segments take more than maxCachedBytes. The view being served is
// always kept.
const (
	maxViews       = 32
	maxCachedBytes = 32 << 20
)

type sdView struct {
	filter   Filter // Shard.Index is irrelevant: parts cover every index
	gen      uint64
	lastUsed uint64
	// parts has one entry per scrape shard, one when unsharded.
	parts []viewPart
	bytes int // deflate bytes held by the parts' fragments
}

// viewPart is the response of one scrape shard: its fragment of every
// registry shard and the body assembled from them.
type viewPart struct {
	frags [registry.ShardCount]fragment
	body  Body
}

type fragment struct {
	gen   uint64
	valid bool
	// size and crc are those of the fragment's JSON; deflate is that JSON as
	// raw deflate ending in a sync flush, nil when the fragment is empty.
	size    int
	crc     uint32
	deflate []byte
}

// NewCache creates an http_sd cache over a registry.
func NewCache(reg *registry.Registry, metrics *collector.Server) *Cache {
	var e [8]byte
	_, _ = rand.Read(e[:]) // crypto/rand.Read does not fail
	return &Cache{reg: reg, metrics: metrics, views: make(map[string]*sdView), epoch: hex.EncodeToString(e[:])}
}

// Body is one http_sd response, held as a gzip member in pieces. It is
// immutable and may be kept and written concurrently.
type Body struct {
	gzip [][]byte
	// Size is the length of the JSON; GzipSize that of the gzip member.
	Size     int
	GzipSize int
	// tag identifies the content within the cache's lifetime.
	tag string
}

// ETag is the body's entity tag (quoted) in the identity or gzip encoding.
// It changes exactly when the content does, and differs between filters,
// scrape shards and encodings.
func (b Body) ETag(gzip bool) string {
	if gzip {
		return `"` + b.tag + `-gzip"`
	}
	return `"` + b.tag + `"`
}

// WriteGzip writes the gzip member.
func (b Body) WriteGzip(w io.Writer) error {
	for _, p := range b.gzip {
		if _, err := w.Write(p); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSON writes the JSON, inflating it on the way.
func (b Body) WriteJSON(w io.Writer) error {
	if len(b.gzip) < 2 {
		return errors.New("empty http_sd body")
	}
	// The pieces between the gzip header and trailer are one deflate stream.
	readers := make([]io.Reader, 0, len(b.gzip)-2)
	for _, p := range b.gzip[1 : len(b.gzip)-1] {
		readers = append(readers, bytes.NewReader(p))
	}
	zr := flate.NewReader(io.MultiReader(readers...))
	defer zr.Close()
	n, err := io.Copy(w, zr)
	if err != nil {
		return fmt.Errorf("inflate http_sd body: %w", err)
	}
	if n != int64(b.Size) {
		return fmt.Errorf("inflate http_sd body: %d bytes, want %d", n, b.Size)
	}
	return nil
}

// Get returns the body for a filter, rebuilding what changed since the last
// call.
func (c *Cache) Get(f Filter) Body {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.view(f)
	c.refresh(v)
	c.evict(v)
	idx := 0
	if f.Shard.Sharded() {
		idx = f.Shard.Index
	}
	return v.parts[idx].body
}

func (c *Cache) view(f Filter) *sdView {
	c.clock++
	k := f.key()
	v, ok := c.views[k]
	if !ok {
		parts := 1
		if f.Shard.Sharded() {
			parts = f.Shard.Count
		}
		f.Shard.Index = 0
		v = &sdView{filter: f, parts: make([]viewPart, parts)}
		c.views[k] = v
	}
	v.lastUsed = c.clock
	return v
}

// evict drops least recently used views other than keep until the bounds
// hold.
func (c *Cache) evict(keep *sdView) {
	for {
		total := 0
		var oldestKey string
		var oldest *sdView
		for k, v := range c.views {
			total += v.bytes
			if v != keep && (oldest == nil || v.lastUsed < oldest.lastUsed) {
				oldestKey, oldest = k, v
			}
		}
		if oldest == nil || (len(c.views) <= maxViews && total <= maxCachedBytes) {
			return
		}
		delete(c.views, oldestKey)
	}
}

// refresh brings a view up to the registry's generation.
func (c *Cache) refresh(v *sdView) {
	gen := c.reg.Generation()
	if v.parts[0].body.gzip != nil && v.gen == gen {
		return
	}
	start := time.Now()
	rebuilt := false
	c.changed = slices.Grow(c.changed[:0], len(v.parts))[:len(v.parts)]
	for p := range v.parts {
		// A part never assembled has a body to make, even if empty.
		c.changed[p] = v.parts[p].body.gzip == nil
	}
	for i := range registry.ShardCount {
		// All parts' fragments of a registry shard are built together.
		fr := &v.parts[0].frags[i]
		if fr.valid && fr.gen == c.reg.ShardGeneration(i) {
			continue
		}
		c.buildFragments(v, i)
		rebuilt = true
	}
	for p := range v.parts {
		if c.changed[p] {
			c.version++
			v.parts[p].body = assembleGzip(&v.parts[p].frags, c.epoch+"-"+strconv.FormatUint(c.version, 16))
		}
	}
	v.gen = gen
	if rebuilt && c.metrics != nil {
		c.metrics.HTTPSDRebuildSeconds.Observe(time.Since(start).Seconds())
	}
}

// buildFragments re-serializes registry shard shardIdx for every part of a
// view, and marks in c.changed the parts whose content changed.
func (c *Cache) buildFragments(v *sdView, shardIdx int) {
	n := len(v.parts)
	c.byPart = slices.Grow(c.byPart[:0], n)[:n]
	for p := range c.byPart {
		c.byPart[p] = c.byPart[p][:0]
	}
	gen := c.reg.EachListed(shardIdx, func(a *registry.Record) {
		if v.filter.matchAgent(a) {
			p := ScrapeShardOf(a.ID, n)
			c.byPart[p] = append(c.byPart[p], a)
		}
	})
	for p := range v.parts {
		agents := c.byPart[p]
		sort.Slice(agents, func(i, j int) bool { return agents[i].ID < agents[j].ID })
		buf := c.scratch[:0]
		for _, a := range agents {
			buf = appendAgentGroups(buf, a, v.filter)
		}
		c.scratch = buf
		fr := &v.parts[p].frags[shardIdx]
		old := *fr
		// A new segment every time: a response in flight may still be
		// reading the old one, so published segments are never modified.
		fr.size = len(buf)
		fr.crc = crc32.ChecksumIEEE(buf)
		fr.deflate = nil
		if len(buf) > 0 {
			fr.deflate = c.deflater.Deflate(buf)
		}
		fr.gen = gen
		fr.valid = true
		v.bytes += len(fr.deflate) - len(old.deflate)
		// Deflate is lossless and deterministic for one level, so equal
		// segments mean equal JSON: a rebuild that changed nothing (a
		// heartbeat reviving a record as it was) keeps the ETag.
		if !old.valid || old.size != fr.size || !bytes.Equal(old.deflate, fr.deflate) {
			c.changed[p] = true
		}
		// Drop the references so that the records can be freed.
		clear(agents)
	}
}

// JSON pieces spliced between the fragments.
const (
	jsonOpen  = "["
	jsonComma = ","
	jsonClose = "]"
)

// assembleGzip builds one gzip member, in pieces, from the fragments' deflate
// segments, with the JSON punctuation spliced in as stored blocks.
func assembleGzip(frags *[registry.ShardCount]fragment, tag string) Body {
	m := gzsplice.New(2*len(frags) + 1)
	m.Add(gzsplice.Stored(jsonOpen, false), crc32.ChecksumIEEE([]byte(jsonOpen)), len(jsonOpen))
	sep, sepCRC := gzsplice.Stored(jsonComma, false), crc32.ChecksumIEEE([]byte(jsonComma))
	first := true
	for i := range frags {
		fr := &frags[i]
		if fr.size == 0 {
			continue
		}
		if !first {
			m.Add(sep, sepCRC, len(jsonComma))
		}
		first = false
		m.Add(fr.deflate, fr.crc, fr.size)
	}
	m.Add(gzsplice.Stored(jsonClose, true), crc32.ChecksumIEEE([]byte(jsonClose)), len(jsonClose))
	pieces, size, gzSize := m.Finish()
	return Body{gzip: pieces, Size: size, GzipSize: gzSize, tag: tag}
}
