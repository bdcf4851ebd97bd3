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

package discovery

import (
	"bytes"
	"compress/flate"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// Filter selects the target groups of one http_sd response. Exporters are
// alternatives (any may match); labels must all match; Shard keeps the
// agents of one scrape shard; Tunnel, when set, keeps the agents that are
// (or are not) scraped through tunnels.
type Filter struct {
	Exporters []string
	Labels    [][2]string
	Shard     ScrapeShard
	Tunnel    *bool
}

// ParseFilter reads ?exporter=NAME and ?label=KEY=VALUE query parameters,
// both repeatable, ?shard=I&shards=N and ?tunnel=true|false. Unknown parameters are an error so
// that a typo in prometheus.yml does not silently select everything.
func ParseFilter(q url.Values) (Filter, error) {
	var f Filter
	shard, err := parseScrapeShard(q["shard"], q["shards"])
	if err != nil {
		return Filter{}, err
	}
	f.Shard = shard
	for key, vals := range q {
		switch key {
		case "shard", "shards":
		case "tunnel":
			if len(vals) != 1 || (vals[0] != "true" && vals[0] != "false") {
				return Filter{}, errors.New("tunnel filter must be given once, as true or false")
			}
			on := vals[0] == "true"
			f.Tunnel = &on
		case "exporter":
			for _, v := range vals {
				if v == "" {
					return Filter{}, errors.New("empty exporter filter")
				}
				f.Exporters = append(f.Exporters, v)
			}
		case "label":
			for _, v := range vals {
				k, val, ok := strings.Cut(v, "=")
				if !ok || k == "" {
					return Filter{}, fmt.Errorf("label filter %q is not KEY=VALUE", v)
				}
				f.Labels = append(f.Labels, [2]string{k, val})
			}
		default:
			return Filter{}, fmt.Errorf("unknown query parameter %q (use exporter, label, shard, shards and tunnel)", key)
		}
	}
	sort.Strings(f.Exporters)
	f.Exporters = slices.Compact(f.Exporters)
	sort.Slice(f.Labels, func(i, j int) bool {
		if f.Labels[i][0] != f.Labels[j][0] {
			return f.Labels[i][0] < f.Labels[j][0]
		}
		return f.Labels[i][1] < f.Labels[j][1]
	})
	return f, nil
}

// key is the canonical form of a filter, used to share cached views. The
// scrape shard's index is not part of it: one view serves all shards of a
// shard count.
func (f Filter) key() string {
	var b strings.Builder
	if f.Shard.Sharded() {
		b.WriteString("s=")
		b.WriteString(strconv.Itoa(f.Shard.Count))
	}
	if f.Tunnel != nil {
		b.WriteString("t=")
		b.WriteString(strconv.FormatBool(*f.Tunnel))
	}
	for _, e := range f.Exporters {
		b.WriteString("e=")
		b.WriteString(strconv.Quote(e))
	}
	for _, l := range f.Labels {
		b.WriteString("l=")
		b.WriteString(strconv.Quote(l[0]))
		b.WriteString(strconv.Quote(l[1]))
	}
	return b.String()
}

func (f Filter) matchAgent(a *record) bool {
	if f.Tunnel != nil && *f.Tunnel != a.Tunnel {
		return false
	}
	for _, l := range f.Labels {
		if !a.Labels.Has(l[0]) || a.Labels.Get(l[0]) != l[1] {
			return false
		}
	}
	return true
}

func (f Filter) matchExporter(name string) bool {
	if len(f.Exporters) == 0 {
		return true
	}
	_, found := slices.BinarySearch(f.Exporters, name)
	return found
}

// SDCache serves http_sd bodies. The registry is split in shards; each cached
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
type SDCache struct {
	reg     *Registry
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
	byPart   [][]*record
	changed  []bool
	deflater segmentDeflater
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
	frags [shardCount]fragment
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

// NewSDCache creates an http_sd cache over a registry.
func NewSDCache(reg *Registry, metrics *collector.Server) *SDCache {
	var e [8]byte
	_, _ = rand.Read(e[:]) // crypto/rand.Read does not fail
	return &SDCache{reg: reg, metrics: metrics, views: make(map[string]*sdView), epoch: hex.EncodeToString(e[:])}
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
func (c *SDCache) Get(f Filter) Body {
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

func (c *SDCache) view(f Filter) *sdView {
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
func (c *SDCache) evict(keep *sdView) {
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
func (c *SDCache) refresh(v *sdView) {
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
	for i := range shardCount {
		// All parts' fragments of a registry shard are built together.
		fr := &v.parts[0].frags[i]
		if fr.valid && fr.gen == c.reg.shardGen(i) {
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
func (c *SDCache) buildFragments(v *sdView, shardIdx int) {
	n := len(v.parts)
	c.byPart = slices.Grow(c.byPart[:0], n)[:n]
	for p := range c.byPart {
		c.byPart[p] = c.byPart[p][:0]
	}
	gen := c.reg.eachListed(shardIdx, func(a *record) {
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
			fr.deflate = c.deflater.deflate(buf)
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

// appendAgentGroups appends the target groups of one agent (its own metrics,
// then one per exporter), comma separated, to buf.
func appendAgentGroups(buf []byte, a *record, f Filter) []byte {
	host := a.Address
	if a.Tunnel {
		// The server routes CONNECT by hostname, which the agent's
		// certificate carries; a tunneled host's address is often a private
		// one that is not unique across sites.
		host = a.Hostname
	}
	target := net.JoinHostPort(host, strconv.Itoa(int(a.Port)))
	if f.matchExporter(protocol.AgentExporterName) {
		buf = appendGroup(buf, a, target, protocol.AgentExporterName, protocol.AgentMetricsPath)
	}
	for _, e := range a.Exporters {
		if f.matchExporter(e.Name) {
			buf = appendGroup(buf, a, target, e.Name, e.Path)
		}
	}
	return buf
}

func appendGroup(buf []byte, a *record, target, exporter, path string) []byte {
	if len(buf) > 0 {
		buf = append(buf, ',')
	}
	buf = append(buf, `{"targets":[`...)
	buf = appendJSONString(buf, target)
	buf = append(buf, `],"labels":{`...)
	// Keys in byte order, so the output is stable and diffable:
	// __meta_baremetal_sd_* < __metrics_path__ < __scheme__.
	buf = appendLabel(buf, protocol.MetaAddress, a.Address, false)
	buf = appendLabel(buf, protocol.MetaAgentID, a.ID, true)
	buf = appendLabel(buf, protocol.MetaExporter, exporter, true)
	buf = appendLabel(buf, protocol.MetaHostname, a.Hostname, true)
	// Labels are sorted by name already.
	a.Labels.Range(func(l labels.Label) {
		buf = append(buf, `,"`+protocol.MetaLabelPrefix...)
		buf = appendJSONStringBody(buf, l.Name)
		buf = append(buf, `":`...)
		buf = appendJSONString(buf, l.Value)
	})
	buf = appendLabel(buf, protocol.MetaMaintenance, strconv.FormatBool(a.Maintenance), true)
	if a.Tunnel {
		buf = appendLabel(buf, protocol.MetaTunnel, "true", true)
	}
	buf = appendLabel(buf, "__metrics_path__", path, true)
	buf = appendLabel(buf, "__scheme__", "https", true)
	return append(buf, "}}"...)
}

func appendLabel(buf []byte, name, value string, comma bool) []byte {
	if comma {
		buf = append(buf, ',')
	}
	buf = appendJSONString(buf, name)
	buf = append(buf, ':')
	return appendJSONString(buf, value)
}

func appendJSONString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	buf = appendJSONStringBody(buf, s)
	return append(buf, '"')
}

const hexDigits = "0123456789abcdef"

// appendJSONStringBody escapes s for a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json does; registration validation refuses it anyway.
func appendJSONStringBody(buf []byte, s string) []byte {
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			switch {
			case b == '"' || b == '\\':
				buf = append(buf, '\\', b)
			case b < 0x20:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			default:
				buf = append(buf, b)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			buf = append(buf, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			buf = append(buf, `\u202`...)
			buf = append(buf, hexDigits[r&0xf])
		default:
			buf = append(buf, s[i:i+size]...)
		}
		i += size
	}
	return buf
}

// JSON pieces spliced between the fragments.
const (
	jsonOpen  = "["
	jsonComma = ","
	jsonClose = "]"
)

// assembleGzip builds one gzip member, in pieces, from the fragments' deflate
// segments. Every segment ends in a sync flush, so the stream is byte aligned
// between them and the JSON punctuation can be spliced in as stored blocks;
// the member's CRC is combined from the fragments' CRCs.
func assembleGzip(frags *[shardCount]fragment, tag string) Body {
	pieces := make([][]byte, 0, 2*len(frags)+3)
	// Header: magic, CM=deflate, no flags, no mtime, XFL=0, OS=unknown.
	pieces = append(pieces, []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255})
	pieces = append(pieces, storedBlock(jsonOpen, false))
	crc := crc32.ChecksumIEEE([]byte(jsonOpen))
	size := len(jsonOpen)
	sep := storedBlock(jsonComma, false)
	first := true
	for i := range frags {
		fr := &frags[i]
		if fr.size == 0 {
			continue
		}
		if !first {
			pieces = append(pieces, sep)
			crc = crc32Combine(crc, crc32.ChecksumIEEE([]byte(jsonComma)), len(jsonComma))
			size += len(jsonComma)
		}
		first = false
		pieces = append(pieces, fr.deflate)
		crc = crc32Combine(crc, fr.crc, fr.size)
		size += fr.size
	}
	pieces = append(pieces, storedBlock(jsonClose, true))
	crc = crc32Combine(crc, crc32.ChecksumIEEE([]byte(jsonClose)), len(jsonClose))
	size += len(jsonClose)
	trailer := binary.LittleEndian.AppendUint32(nil, crc)
	pieces = append(pieces, binary.LittleEndian.AppendUint32(trailer, uint32(size)))
	gzSize := 0
	for _, p := range pieces {
		gzSize += len(p)
	}
	return Body{gzip: pieces, Size: size, GzipSize: gzSize, tag: tag}
}

// storedBlock returns data as a stored (uncompressed) deflate block. The
// stream must be byte aligned where it goes, which a sync flush guarantees.
func storedBlock(data string, final bool) []byte {
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

// segmentLevel is the deflate level of the cached segments. On http_sd JSON
// of 100,000 agents level 2 deflates in the time of BestSpeed (level 1 has
// an encoder of its own) to 3.8 instead of 4.5 MB, and inflates faster;
// level 5 would save another 0.6 MB for twice the time
// (BenchmarkSegmentDeflateLevels).
const segmentLevel = 2

// segmentDeflater compresses fragments into deflate segments, reusing its
// compressor (about a megabyte of state) and output buffer between calls.
type segmentDeflater struct {
	w   *flate.Writer
	buf bytes.Buffer
}

// deflate returns data as raw deflate ending in a sync flush, in a slice of
// its own exact size.
func (d *segmentDeflater) deflate(data []byte) []byte {
	d.buf.Reset()
	if d.w == nil {
		w, err := flate.NewWriter(&d.buf, segmentLevel)
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
