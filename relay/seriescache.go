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
	"encoding/binary"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
)

// DefaultSeriesCacheBytes bounds an exporter's series cache: about 45,000
// series of four labels and a 50-byte name, 50,000 of node_exporter's. An
// exporter of 30,000 such series fits with room for churn (8 MiB held
// 29,850 of them, and the rest were relabeled on every scrape). It is not
// larger because the agent adds it, for every exporter with rules, to its
// soft memory limit, whatever the cache holds.
const DefaultSeriesCacheBytes = 12 << 20

// seriesCacheMaxAge is how many scrapes an entry survives unseen: series
// that went away (a restarted process, a removed disk) stop taking room.
const seriesCacheMaxAge = 10

// seriesEntryOverhead is about what an entry costs beyond its key and
// series text: its map slot, its slot in the entry table and the rounding
// of its string's allocation. With it the bytes counted are within a few
// percent of the heap a full cache holds (BenchmarkSeriesCacheFootprint).
const seriesEntryOverhead = 96

// seriesCache remembers, across scrapes, what relabeling made of a series,
// as Prometheus' scrape cache does: keyed by the parser's text of the series
// (and how names are spelled for the scraper), it holds whether the rules
// dropped the series and otherwise the series text to write. A warm scrape
// then neither builds labels nor runs rules for series it has seen, which
// is most of what rules cost.
//
// The outcome of a series depends only on its text, the rules and the
// exporter label, which are fixed for a pipeline's configuration: a
// configuration change builds a new Relay and so new caches. The cache is
// bounded in bytes; when it is full, new series are relayed without being
// remembered until entries age out. A cache serves one scrape at a time.
//
// A look-up touches little memory, since it is made for every series: the
// map holds indexes into one table of entries, and an entry's key and
// series text are one string, the key a prefix of it. Exporters write their
// series in the same order scrape after scrape, so each entry also links to
// the one that came after it last time: a look-up first compares the key
// with that entry's, and goes to the map only when the order changed.
type seriesCache struct {
	index    map[string]int32
	slots    []seriesEntry
	free     []int32 // indexes of unused slots
	bytes    int
	maxBytes int
	// scrape counts the scrapes that used the cache; entries remember the
	// last one that saw them.
	scrape uint32
	// key is the key of the last look-up, which remember files under.
	key []byte
	// prev is the entry of the series before the one at hand in this
	// scrape, first the scrape's first one, -1 for none; next is the entry
	// expected next, the one that followed prev in an earlier scrape.
	prev, first, next int32
}

type seriesEntry struct {
	text    string // the key, then the series text as written
	keyLen  int32
	seen    uint32
	dropped bool
	// next is the entry that followed this one when it was last seen, -1
	// for none.
	next int32
}

// series is the series text, name{labels}, when not dropped.
func (e *seriesEntry) series() string { return e.text[e.keyLen:] }

func newSeriesCache(maxBytes int) *seriesCache {
	return &seriesCache{index: make(map[string]int32), maxBytes: maxBytes, prev: -1, first: -1, next: -1}
}

// len is the number of series remembered.
func (c *seriesCache) len() int { return len(c.index) }

// cacheKey is the key of a series' text for a scraper: the spelling of
// names and the format are part of what is remembered. Its first byte is
// below 0x40, which lookupWire's and lookupProtobuf's keys start with.
func (c *seriesCache) cacheKey(raw []byte, esc model.EscapingScheme, om bool) []byte {
	mode := byte(esc) << 1
	if om {
		mode |= 1
	}
	c.key = append(append(c.key[:0], mode), raw...)
	return c.key
}

// lookupWire is lookup for a series of text written as protobuf: its key
// starts with 0x40 and the spelling of names, and the entry's series text
// is what appendWireValue wrote.
func (c *seriesCache) lookupWire(raw []byte, esc model.EscapingScheme) *seriesEntry {
	c.key = append(append(c.key[:0], 0x40|byte(esc)), raw...)
	return c.find()
}

// appendWireValue appends what the cache remembers of a series of text
// written as protobuf: its name, which relabeling kept, and its label
// fields as wire bytes.
func appendWireValue(b []byte, name string, labelFields []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(name)))
	return append(append(b, name...), labelFields...)
}

// appendSizedValue appends what the cache remembers of a protobuf metric:
// its label fields' share of decodedSize, which a hit adds without reading
// them, and series, what it is written as (nothing when dropped).
func appendSizedValue(b []byte, size int, series []byte) []byte {
	return append(binary.AppendUvarint(b, uint64(size)), series...)
}

// sizedValue reads what appendSizedValue wrote.
func (e *seriesEntry) sizedValue() (size int, series string) {
	v := e.series()
	n := 0
	for k := 0; k < len(v) && k < binary.MaxVarintLen64; k++ {
		n |= int(v[k]&0x7f) << (7 * k)
		if v[k] < 0x80 {
			return n, v[k+1:]
		}
	}
	return 0, "" // not written by appendSizedValue, which never happens
}

// wireValue reads what appendWireValue wrote.
func (e *seriesEntry) wireValue() (name, labelFields string) {
	v := e.series()
	var n uint64
	for k := 0; k < len(v) && k < binary.MaxVarintLen64; k++ {
		n |= uint64(v[k]&0x7f) << (7 * k)
		if v[k] < 0x80 {
			if v = v[k+1:]; uint64(len(v)) < n {
				break
			}
			return v[:n], v[n:]
		}
	}
	return "", "" // not written by appendWireValue, which never happens
}

// lookupProtobuf is lookup for a metric of a protobuf family, by its
// label fields as they came (see streamFamily): the family's name and type
// are part of the key, as is the spelling of names for the scraper and
// whether the scraper reads text (or OpenMetrics). The entry's series text
// is what appendSizedValue wrote: the label fields' share of the metric's
// decoded size, then, for a scraper of protobuf, the metric's label fields
// as written, and for a scraper of text (a key that starts with 0xc0) the
// series as written, name{labels}.
func (c *seriesCache) lookupProtobuf(name string, typ dto.MetricType, esc model.EscapingScheme, text bool, labelFields []byte) *seriesEntry {
	mode := 0x80 | byte(esc)
	if text {
		mode |= 0x40
	}
	c.key = append(c.key[:0], mode, byte(typ))
	c.key = binary.AppendUvarint(c.key, uint64(len(name)))
	c.key = append(append(c.key, name...), labelFields...)
	return c.find()
}

// lookup returns the remembered outcome of a series, nil if there is none;
// after a miss, remember files the outcome under the same key, built once.
// The entry is valid until the next remember.
func (c *seriesCache) lookup(raw []byte, esc model.EscapingScheme, om bool) *seriesEntry {
	c.cacheKey(raw, esc, om)
	return c.find()
}

// find looks up the key built by lookup or lookupProtobuf: in the entry
// expected next, else in the map.
func (c *seriesCache) find() *seriesEntry {
	i := c.next
	if i < 0 || c.slots[i].text == "" || c.slots[i].text[:c.slots[i].keyLen] != string(c.key) {
		var ok bool
		if i, ok = c.index[string(c.key)]; !ok {
			return nil
		}
	}
	c.follow(i)
	e := &c.slots[i]
	e.seen = c.scrape
	return e
}

// follow records that entry i came after the previous one in this scrape.
func (c *seriesCache) follow(i int32) {
	if c.prev >= 0 {
		c.slots[c.prev].next = i
	} else {
		c.first = i
	}
	c.prev = i
	c.next = c.slots[i].next
}

// remember files the outcome of the series of the last lookup, which
// missed.
func (c *seriesCache) remember(dropped bool, series []byte) {
	key := c.key
	size := len(key) + len(series) + seriesEntryOverhead
	if c.bytes+size > c.maxBytes {
		return
	}
	text := string(key) + string(series)
	e := seriesEntry{text: text, keyLen: int32(len(key)), seen: c.scrape, dropped: dropped, next: -1}
	var i int32
	if n := len(c.free); n > 0 {
		i = c.free[n-1]
		c.free = c.free[:n-1]
		c.slots[i] = e
	} else {
		i = int32(len(c.slots))
		c.slots = append(c.slots, e)
	}
	c.index[text[:len(key)]] = i
	c.bytes += size
	c.follow(i)
}

// endScrape ages the cache after a scrape: every few scrapes, entries not
// seen for seriesCacheMaxAge scrapes are dropped.
func (c *seriesCache) endScrape() {
	// The next scrape is expected to begin as this one did.
	c.next, c.prev, c.first = c.first, -1, -1
	c.scrape++
	if c.scrape%(seriesCacheMaxAge/2) != 0 {
		return
	}
	for i := range c.slots {
		e := &c.slots[i]
		if e.text == "" || c.scrape-e.seen <= seriesCacheMaxAge {
			continue
		}
		delete(c.index, e.text[:e.keyLen])
		c.bytes -= len(e.text) + seriesEntryOverhead
		*e = seriesEntry{}
		c.free = append(c.free, int32(i))
	}
}
