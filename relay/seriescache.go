package relay

import "github.com/prometheus/common/model"

// DefaultSeriesCacheBytes bounds an exporter's series cache.
const DefaultSeriesCacheBytes = 8 << 20

// seriesCacheMaxAge is how many scrapes an entry survives unseen: series
// that went away (a restarted process, a removed disk) stop taking room.
const seriesCacheMaxAge = 10

// seriesEntryOverhead is about what an entry costs beyond its key and
// series text: the map slot, the entry and the string header.
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
type seriesCache struct {
	entries  map[string]*seriesEntry
	bytes    int
	maxBytes int
	// scrape counts the scrapes that used the cache; entries remember the
	// last one that saw them.
	scrape uint32
	key    []byte
}

type seriesEntry struct {
	seen    uint32
	dropped bool
	series  []byte // name{labels} as written, when not dropped
}

func newSeriesCache(maxBytes int) *seriesCache {
	return &seriesCache{entries: make(map[string]*seriesEntry), maxBytes: maxBytes}
}

// cacheKey is the key of a series' text for a scraper: the spelling of
// names and the format are part of what is remembered.
func (c *seriesCache) cacheKey(raw []byte, esc model.EscapingScheme, om bool) []byte {
	mode := byte(esc) << 1
	if om {
		mode |= 1
	}
	c.key = append(append(c.key[:0], mode), raw...)
	return c.key
}

// get returns the remembered outcome of a series, nil if there is none.
func (c *seriesCache) get(key []byte) *seriesEntry {
	e := c.entries[string(key)]
	if e != nil {
		e.seen = c.scrape
	}
	return e
}

// put remembers the outcome of a series; series is copied.
func (c *seriesCache) put(key []byte, dropped bool, series []byte) {
	size := len(key) + len(series) + seriesEntryOverhead
	if c.bytes+size > c.maxBytes {
		return
	}
	e := &seriesEntry{seen: c.scrape, dropped: dropped}
	if !dropped {
		e.series = append([]byte(nil), series...)
	}
	c.entries[string(key)] = e
	c.bytes += size
}

// endScrape ages the cache after a scrape: every few scrapes, entries not
// seen for seriesCacheMaxAge scrapes are dropped.
func (c *seriesCache) endScrape() {
	c.scrape++
	if c.scrape%(seriesCacheMaxAge/2) != 0 {
		return
	}
	for k, e := range c.entries {
		if c.scrape-e.seen > seriesCacheMaxAge {
			delete(c.entries, k)
			c.bytes -= len(k) + len(e.series) + seriesEntryOverhead
		}
	}
}
