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
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/common/config"
	"github.com/prometheus/common/version"

	"github.com/baremetal-sd/baremetal_sd/collector"
)

// Relay serves the exporters of a relay configuration over HTTP.
type Relay struct {
	cfg       *Config
	logger    *slog.Logger
	metrics   *collector.Relay
	exporters map[string]*exporter
	names     []string
	maxNames  int // see nameSet
	// gzips holds gzip writers between responses: each has about a
	// megabyte of compressor state that is worth not allocating per scrape.
	gzips sync.Pool
	// segmentBatches and frameBatches hold the aggregate endpoint's
	// batches between responses (see feed), mergeScratches what else its
	// merge allocates (see mergeScratch).
	segmentBatches, frameBatches, mergeScratches sync.Pool
}

type exporter struct {
	cfg     ExporterConfig
	client  *http.Client
	relay   *Relay
	timeout time.Duration
	mu      sync.Mutex
	idle    []*pipeline // reused between scrapes: buffers keep their size
	health  health
	// cache is the exporter's series cache while no scrape holds it, nil
	// without relabel rules. One scrape at a time uses it; a concurrent
	// scrape of the same exporter relays without.
	cache *seriesCache
}

// New builds a relay with one HTTP client per exporter, from a
// configuration that ParseConfig or LoadConfig validated. metrics may be
// nil.
func New(cfg *Config, logger *slog.Logger, metrics *collector.Relay) (*Relay, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Relay{cfg: cfg, logger: logger, metrics: metrics, exporters: make(map[string]*exporter, len(cfg.Exporters)), maxNames: maxWrittenNames}
	for _, ec := range cfg.Exporters {
		client, err := config.NewClientFromConfig(ec.HTTPClientConfig, "relay_"+ec.Name,
			config.WithUserAgent("baremetal_sd/"+version.Version))
		if err != nil {
			return nil, fmt.Errorf("exporter %q: http client: %w", ec.Name, err)
		}
		timeout := time.Duration(ec.Timeout)
		if timeout <= 0 {
			timeout = DefaultTimeout
		}
		e := &exporter{cfg: ec, client: client, relay: r, timeout: timeout}
		if len(ec.MetricRelabelConfigs) > 0 && cfg.SeriesCacheBytes > 0 {
			e.cache = newSeriesCache(cfg.SeriesCacheBytes)
		}
		r.exporters[ec.Name] = e
		r.names = append(r.names, ec.Name)
		if metrics != nil {
			metrics.Up.WithLabelValues(ec.Name)
		}
	}
	if cfg.Label() == "" && len(r.names) > 1 {
		logger.Info("Aggregate endpoint disabled", "path", aggregatePath, "err", errAggregateUnlabeled)
	}
	return r, nil
}

// recordFailure classifies a failed relay of the exporter and records it:
// the debug log, the exporter's health, up and the failure counters.
func (e *exporter) recordFailure(ctx context.Context, err error) *fetchError {
	fe := classify(ctx, err)
	e.relay.logger.Debug("Relaying exporter failed", "exporter", e.cfg.Name, "err", fe.err)
	e.failed(fe)
	if m := e.relay.metrics; m != nil {
		m.Up.WithLabelValues(e.cfg.Name).Set(0)
		m.UpstreamErrors.WithLabelValues(e.cfg.Name, fe.reason).Inc()
		if fe.reason == "parse" {
			m.ParseErrors.WithLabelValues(e.cfg.Name).Inc()
		}
	}
	return fe
}

// CloseIdleConnections closes the idle connections to the exporters, for a
// relay a reload replaced.
func (r *Relay) CloseIdleConnections() {
	for _, e := range r.exporters {
		e.client.CloseIdleConnections()
	}
}

// SeriesCacheBytes is how much the exporters' series caches may hold
// together: the relay's memory that lives from one scrape to the next.
func (r *Relay) SeriesCacheBytes() int {
	n := 0
	for _, e := range r.exporters {
		if len(e.cfg.MetricRelabelConfigs) > 0 && r.cfg.SeriesCacheBytes > 0 {
			n += r.cfg.SeriesCacheBytes
		}
	}
	return n
}

// ExporterNames lists the configured exporters in configuration order.
func (r *Relay) ExporterNames() []string { return append([]string(nil), r.names...) }

// ServeHTTP serves GET (and HEAD) /exporters/<name>/metrics and
// /exporters/metrics; anything else is a 404.
//
// An upstream failure before the first byte of the response is a 502 (504
// on timeout) with a one-line reason. After bytes went out the status
// cannot change any more: the handler then panics with
// http.ErrAbortHandler, which net/http turns into an aborted response, so
// the scraper sees a failed scrape rather than a truncated body that
// parses.
func (r *Relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == aggregatePath {
		if !allowed(w, req) {
			return
		}
		r.serveAggregate(w, req)
		return
	}
	name, ok := strings.CutPrefix(req.URL.Path, "/exporters/")
	if ok {
		name, ok = strings.CutSuffix(name, "/metrics")
	}
	e := r.exporters[name]
	if !ok || e == nil {
		http.NotFound(w, req)
		return
	}
	if allowed(w, req) {
		e.serve(w, req)
	}
}

func allowed(w http.ResponseWriter, req *http.Request) bool {
	if req.Method == http.MethodGet || req.Method == http.MethodHead {
		return true
	}
	w.Header().Set("Allow", "GET, HEAD")
	http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	return false
}

// timeoutOffset is how much sooner than the scraper's own timeout the relay
// gives up, so that its 504 and one-line reason still reach a scraper that
// would otherwise have hung up first (blackbox_exporter's --timeout-offset
// does the same). It never takes more than half of a short timeout.
const timeoutOffset = 500 * time.Millisecond

// scrapeTimeout is the configured timeout, shortened to what the scraper is
// willing to wait (X-Prometheus-Scrape-Timeout-Seconds) less timeoutOffset.
// A header that is not a positive finite number is ignored; the arithmetic
// stays in float seconds until the result is known to be below configured,
// so a huge value cannot overflow into a negative duration.
func scrapeTimeout(req *http.Request, configured time.Duration) time.Duration {
	s := req.Header.Get("X-Prometheus-Scrape-Timeout-Seconds")
	if s == "" {
		return configured
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(s), 64)
	if err != nil || !(v > 0) || math.IsInf(v, 0) {
		return configured
	}
	budget := max(v-timeoutOffset.Seconds(), v/2)
	if budget >= configured.Seconds() {
		return configured
	}
	return max(time.Duration(budget*float64(time.Second)), time.Nanosecond)
}

func (e *exporter) pipeline() *pipeline {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n := len(e.idle); n > 0 {
		p := e.idle[n-1]
		e.idle = e.idle[:n-1]
		return p
	}
	cfg := e.relay.cfg
	return newPipeline(e.cfg.Name, "", e.cfg.MetricRelabelConfigs, cfg.limits())
}

// takeCache hands the series cache to one scrape, nil when another scrape
// holds it or there is none.
func (e *exporter) takeCache() *seriesCache {
	e.mu.Lock()
	defer e.mu.Unlock()
	c := e.cache
	e.cache = nil
	return c
}

// returnCache gives the series cache back after a scrape, also a failed
// one: what it remembers holds whatever became of the scrape.
func (e *exporter) returnCache(c *seriesCache) {
	if c == nil {
		return
	}
	c.endScrape()
	e.mu.Lock()
	e.cache = c
	e.mu.Unlock()
}

// release keeps a pipeline for the next scrape, unless it grew unusually
// large buffers.
func (e *exporter) release(p *pipeline) {
	p.cache, p.cached = nil, nil
	if p.size() > 8<<20 {
		return
	}
	e.mu.Lock()
	if len(e.idle) < 4 {
		e.idle = append(e.idle, p)
	}
	e.mu.Unlock()
}

// serve relays one exporter. Failures before the first byte are a 502 (504
// on timeout) with a one-line reason, so Prometheus' up is right per
// exporter; after it, the response is aborted (see ServeHTTP).
func (e *exporter) serve(w http.ResponseWriter, req *http.Request) {
	m := e.relay.metrics
	name := e.cfg.Name
	start := time.Now()
	accepted := parseAccept(req.Header.Get("Accept"))
	timeout := scrapeTimeout(req, e.timeout)
	ctx, cancel := context.WithTimeout(req.Context(), timeout)
	defer cancel()
	p := e.pipeline()
	p.setLabel("")
	cache := e.takeCache()
	p.cache = cache
	defer e.returnCache(cache)

	fail := func(err error) *fetchError {
		fe := e.recordFailure(ctx, err)
		if m != nil {
			m.ScrapeDuration.WithLabelValues(name).Observe(time.Since(start).Seconds())
		}
		return fe
	}

	up, err := e.fetch(ctx, p, accepted.upstreamAccept(), timeout)
	if err != nil {
		fe := fail(err)
		e.release(p)
		http.Error(w, oneLine(fe.Error()), fe.status)
		return
	}
	defer up.closer.Close()

	neg := accepted.answer(up.format)
	resp := e.relay.newResponse(w, req, neg)
	err = p.relay(up.body, up.format, up.ct, neg.format, neg.esc, resp.sink)
	if ferr := e.relay.finish(resp, err == nil); err == nil || errors.Is(err, errAsyncFailed) {
		err = ferr
	}
	if err != nil {
		fe := fail(err)
		if resp.dst.wrote {
			panic(http.ErrAbortHandler)
		}
		e.release(p)
		http.Error(w, oneLine(fe.Error()), fe.status)
		return
	}
	samples := p.samples
	e.release(p)
	e.succeeded()
	if m != nil {
		m.Up.WithLabelValues(name).Set(1)
		m.Samples.WithLabelValues(name).Add(float64(samples))
		m.ScrapeDuration.WithLabelValues(name).Observe(time.Since(start).Seconds())
	}
}
