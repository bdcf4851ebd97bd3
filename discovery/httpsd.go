package discovery

import (
	"bytes"
	"compress/flate"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/baremetal-sd/baremetal_sd/collector"
)

// Meta label names of the http_sd target groups.
const (
	MetaPrefix      = "__meta_baremetal_sd_"
	MetaAgentID     = MetaPrefix + "agent_id"
	MetaHostname    = MetaPrefix + "hostname"
	MetaAddress     = MetaPrefix + "address"
	MetaExporter    = MetaPrefix + "exporter"
	MetaMaintenance = MetaPrefix + "maintenance"
	MetaLabelPrefix = MetaPrefix + "label_"
)

// AgentExporterName names the target group of an agent's own /metrics.
// Relay configurations may not use it for an exporter.
const AgentExporterName = "agent"

// AgentMetricsPath is where an agent serves its own telemetry.
const AgentMetricsPath = "/metrics"

// maxViews bounds how many distinct filters keep a cached response.
const maxViews = 32

// Filter selects the target groups of one http_sd response. Exporters are
// alternatives (any may match); labels must all match.
type Filter struct {
	Exporters []string
	Labels    [][2]string
}

// ParseFilter reads ?exporter=NAME and ?label=KEY=VALUE query parameters,
// both repeatable. Unknown parameters are an error so that a typo in
// prometheus.yml does not silently select everything.
func ParseFilter(q url.Values) (Filter, error) {
	var f Filter
	for key, vals := range q {
		switch key {
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
			return Filter{}, fmt.Errorf("unknown query parameter %q (use exporter or label)", key)
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

// key is the canonical form of a filter, used to share cached views.
func (f Filter) key() string {
	var b strings.Builder
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

func (f Filter) matchAgent(a *Agent) bool {
	for _, l := range f.Labels {
		if v, ok := a.Labels[l[0]]; !ok || v != l[1] {
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
// view keeps one serialized fragment per shard and re-serializes only the
// shards whose generation moved, so a change among 100,000 agents costs a few
// hundred agents' worth of JSON. The gzip body is assembled the same way from
// per-shard deflate segments.
type SDCache struct {
	reg     *Registry
	metrics *collector.Server

	mu    sync.Mutex
	views map[string]*sdView
	clock uint64 // logical clock for least-recently-used eviction
	// scratch is where fragments are serialized before they are copied out
	// at their exact size: append's doubling would otherwise leave up to
	// half of each published fragment unused, tens of MiB at 100,000 agents.
	scratch  []byte
	deflater segmentDeflater
}

type sdView struct {
	filter   Filter
	gen      uint64
	lastUsed uint64
	frags    [shardCount]fragment
	pieces   [][]byte // the identity body: "[", fragments and commas, "]"
	size     int
	gzGen    uint64
	gzValid  bool
	gz       []byte
}

type fragment struct {
	gen     uint64
	valid   bool
	json    []byte
	deflate []byte // raw deflate of json ending in a sync flush; nil until needed
}

// NewSDCache creates an http_sd cache over a registry.
func NewSDCache(reg *Registry, metrics *collector.Server) *SDCache {
	return &SDCache{reg: reg, metrics: metrics, views: make(map[string]*sdView)}
}

// Body is one http_sd response: the identity body as pieces to write in
// order, or a gzip body. The slices are immutable and may be kept.
type Body struct {
	Pieces [][]byte
	Size   int
	Gzip   []byte
}

// Get returns the body for a filter, rebuilding what changed since the last
// call. With gzip it returns a complete gzip member.
func (c *SDCache) Get(f Filter, gzip bool) Body {
	c.mu.Lock()
	defer c.mu.Unlock()
	v := c.view(f)
	c.refresh(v)
	if !gzip {
		return Body{Pieces: v.pieces, Size: v.size}
	}
	if !v.gzValid || v.gzGen != v.gen {
		v.gz = assembleGzip(v, &c.deflater)
		v.gzGen, v.gzValid = v.gen, true
	}
	return Body{Gzip: v.gz, Size: len(v.gz)}
}

func (c *SDCache) view(f Filter) *sdView {
	c.clock++
	k := f.key()
	v, ok := c.views[k]
	if !ok {
		if len(c.views) >= maxViews {
			c.evictOldest()
		}
		v = &sdView{filter: f}
		c.views[k] = v
	}
	v.lastUsed = c.clock
	return v
}

func (c *SDCache) evictOldest() {
	var oldestKey string
	var oldest uint64
	first := true
	for k, v := range c.views {
		if first || v.lastUsed < oldest {
			oldestKey, oldest, first = k, v.lastUsed, false
		}
	}
	delete(c.views, oldestKey)
}

// refresh brings a view up to the registry's generation.
func (c *SDCache) refresh(v *sdView) {
	gen := c.reg.Generation()
	if v.pieces != nil && v.gen == gen {
		return
	}
	start := time.Now()
	rebuilt := false
	for i := range v.frags {
		fr := &v.frags[i]
		if fr.valid && fr.gen == c.reg.shardGen(i) {
			continue
		}
		c.buildFragment(v.filter, i, fr)
		rebuilt = true
	}
	// A new slice, for the same reason as in buildFragment.
	v.pieces = make([][]byte, 0, 2*len(v.frags)+2)
	v.pieces = append(v.pieces, []byte("["))
	size := 2
	first := true
	for i := range v.frags {
		fr := &v.frags[i]
		if len(fr.json) == 0 {
			continue
		}
		if !first {
			v.pieces = append(v.pieces, comma)
			size++
		}
		first = false
		v.pieces = append(v.pieces, fr.json)
		size += len(fr.json)
	}
	v.pieces = append(v.pieces, []byte("]"))
	v.size = size
	v.gen = gen
	if rebuilt && c.metrics != nil {
		c.metrics.HTTPSDRebuildSeconds.Observe(time.Since(start).Seconds())
	}
}

var comma = []byte(",")

func (c *SDCache) buildFragment(f Filter, shardIdx int, fr *fragment) {
	var agents []*Agent
	gen := c.reg.eachListed(shardIdx, func(a *Agent) {
		if f.matchAgent(a) {
			agents = append(agents, a)
		}
	})
	sort.Slice(agents, func(i, j int) bool { return agents[i].ID < agents[j].ID })
	buf := c.scratch[:0]
	for _, a := range agents {
		buf = appendAgentGroups(buf, a, f)
	}
	c.scratch = buf
	// A fresh slice every time: a concurrent response may still be writing
	// the old fragment, so published fragments are never modified.
	fr.json = bytes.Clone(buf)
	fr.deflate = nil
	fr.gen = gen
	fr.valid = true
}

// appendAgentGroups appends the target groups of one agent (its own metrics,
// then one per exporter), comma separated, to buf.
func appendAgentGroups(buf []byte, a *Agent, f Filter) []byte {
	target := net.JoinHostPort(a.Address, strconv.Itoa(a.Port))
	if f.matchExporter(AgentExporterName) {
		buf = appendGroup(buf, a, target, AgentExporterName, AgentMetricsPath)
	}
	for _, e := range a.Exporters {
		if f.matchExporter(e.Name) {
			buf = appendGroup(buf, a, target, e.Name, e.Path)
		}
	}
	return buf
}

func appendGroup(buf []byte, a *Agent, target, exporter, path string) []byte {
	if len(buf) > 0 {
		buf = append(buf, ',')
	}
	buf = append(buf, `{"targets":[`...)
	buf = appendJSONString(buf, target)
	buf = append(buf, `],"labels":{`...)
	// Keys in byte order, so the output is stable and diffable:
	// __meta_baremetal_sd_* < __metrics_path__ < __scheme__.
	buf = appendLabel(buf, MetaAddress, a.Address, false)
	buf = appendLabel(buf, MetaAgentID, a.ID, true)
	buf = appendLabel(buf, MetaExporter, exporter, true)
	buf = appendLabel(buf, MetaHostname, a.Hostname, true)
	keys := make([]string, 0, len(a.Labels))
	for k := range a.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		buf = append(buf, `,"`+MetaLabelPrefix...)
		buf = appendJSONStringBody(buf, k)
		buf = append(buf, `":`...)
		buf = appendJSONString(buf, a.Labels[k])
	}
	buf = appendLabel(buf, MetaMaintenance, strconv.FormatBool(a.Maintenance), true)
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

// assembleGzip builds one gzip member from the view's per-shard deflate
// segments. Every segment ends in a sync flush, so the stream is byte aligned
// between them and the separators can be spliced in as stored blocks.
func assembleGzip(v *sdView, d *segmentDeflater) []byte {
	size := 10 + 8 + 5*3
	for i := range v.frags {
		fr := &v.frags[i]
		if len(fr.json) > 0 && fr.deflate == nil {
			fr.deflate = d.deflate(fr.json)
		}
		size += len(fr.deflate) + 5 + 1
	}
	out := make([]byte, 0, size)
	// Header: magic, CM=deflate, no flags, no mtime, XFL=0, OS=unknown.
	out = append(out, 0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255)
	crc := uint32(0)
	var total uint32
	out = appendStored(out, []byte("["), false)
	crc = crc32.Update(crc, crc32.IEEETable, []byte("["))
	total++
	first := true
	for i := range v.frags {
		fr := &v.frags[i]
		if len(fr.json) == 0 {
			continue
		}
		if !first {
			out = appendStored(out, comma, false)
			crc = crc32.Update(crc, crc32.IEEETable, comma)
			total++
		}
		first = false
		out = append(out, fr.deflate...)
		crc = crc32.Update(crc, crc32.IEEETable, fr.json)
		total += uint32(len(fr.json))
	}
	out = appendStored(out, []byte("]"), true)
	crc = crc32.Update(crc, crc32.IEEETable, []byte("]"))
	total++
	out = binary.LittleEndian.AppendUint32(out, crc)
	return binary.LittleEndian.AppendUint32(out, total)
}

// appendStored appends a stored (uncompressed) deflate block. The stream
// must be byte aligned, which a sync flush guarantees.
func appendStored(out, data []byte, final bool) []byte {
	hdr := byte(0)
	if final {
		hdr = 1
	}
	n := uint16(len(data))
	out = append(out, hdr, byte(n), byte(n>>8), ^byte(n), ^byte(n>>8))
	return append(out, data...)
}

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
		w, err := flate.NewWriter(&d.buf, flate.BestSpeed)
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
