package relay

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/config"
	"github.com/prometheus/common/version"

	"github.com/baremetal-sd/baremetal_sd/collector"
)

// aggregatePath serves every exporter merged into one exposition.
const aggregatePath = "/exporters/metrics"

// errAggregateUnlabeled is the reason the aggregate endpoint is off.
var errAggregateUnlabeled = errors.New("aggregate endpoint disabled: exporter_label is empty, so the series of several exporters would collide; scrape /exporters/<name>/metrics or set exporter_label")

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
}

type exporter struct {
	cfg     ExporterConfig
	client  *http.Client
	relay   *Relay
	timeout time.Duration
	mu      sync.Mutex
	idle    []*pipeline // reused between scrapes: buffers keep their size
	health  health
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
		r.exporters[ec.Name] = &exporter{cfg: ec, client: client, relay: r, timeout: timeout}
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

// CloseIdleConnections closes the idle connections to the exporters, for a
// relay a reload replaced.
func (r *Relay) CloseIdleConnections() {
	for _, e := range r.exporters {
		e.client.CloseIdleConnections()
	}
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

// acceptsGzip reports whether the scraper takes gzip (q > 0).
func acceptsGzip(req *http.Request) bool {
	for _, part := range strings.Split(req.Header.Get("Accept-Encoding"), ",") {
		enc, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(enc), "gzip") {
			continue
		}
		if q, ok := strings.CutPrefix(strings.ReplaceAll(params, " ", ""), "q="); ok {
			v, err := strconv.ParseFloat(q, 64)
			return err == nil && v > 0
		}
		return true
	}
	return false
}

// newGzipWriter compresses responses at the fastest level: a relay on
// every host should spend its CPU on relaying, and the ratio on expositions
// is close to the default level's.
func newGzipWriter(w io.Writer) *gzip.Writer {
	zw, err := gzip.NewWriterLevel(w, gzip.BestSpeed)
	if err != nil {
		panic(err) // only for an invalid level, and BestSpeed is valid
	}
	return zw
}

// upstream is an open upstream response.
type upstream struct {
	body   io.Reader
	closer io.Closer
	format Format
	ct     string
}

// fetchError is an upstream failure with the status we answer and the
// reason for the metrics.
type fetchError struct {
	status int
	reason string
	err    error
}

func (e *fetchError) Error() string { return e.err.Error() }

func classify(ctx context.Context, err error) *fetchError {
	var fe *fetchError
	switch {
	case errors.As(err, &fe):
		return fe
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return &fetchError{http.StatusGatewayTimeout, "timeout", errors.New("upstream timed out")}
	case errors.Is(err, errBodyTooLarge):
		return &fetchError{http.StatusBadGateway, "body_too_large", err}
	case errors.Is(err, errLineTooLong):
		return &fetchError{http.StatusBadGateway, "line_too_long", err}
	case errors.Is(err, errFrameTooLarge):
		return &fetchError{http.StatusBadGateway, "frame_too_large", err}
	case errors.Is(err, errMetricTooLarge):
		return &fetchError{http.StatusBadGateway, "metric_too_large", err}
	case errors.Is(err, errParse):
		return &fetchError{http.StatusBadGateway, "parse", err}
	case errors.Is(err, errRelabel):
		return &fetchError{http.StatusBadGateway, "relabel", err}
	case errors.Is(err, context.Canceled):
		return &fetchError{http.StatusBadGateway, "canceled", errors.New("scrape canceled")}
	}
	return &fetchError{http.StatusBadGateway, "body", fmt.Errorf("reading upstream body: %w", err)}
}

// oneLine makes an error message fit the one-line reason of a 502.
func oneLine(s string) string {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
	return truncate(s)
}

func truncate(s string) string {
	const limit = 300
	if len(s) > limit {
		return strings.ToValidUTF8(s[:limit], "") + "..."
	}
	return s
}

// fetch asks the exporter for a format compatible with out.
func (e *exporter) fetch(ctx context.Context, p *pipeline, out Format, timeout time.Duration) (*upstream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.cfg.URL, nil)
	if err != nil {
		return nil, &fetchError{http.StatusBadGateway, "request", err}
	}
	req.Header.Set("Accept", upstreamAccept(out))
	if e.cfg.EnableCompression {
		req.Header.Set("Accept-Encoding", "gzip")
	} else {
		req.Header.Set("Accept-Encoding", "identity")
	}
	req.Header.Set("X-Prometheus-Scrape-Timeout-Seconds", strconv.FormatFloat(timeout.Seconds(), 'f', -1, 64))
	resp, err := e.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, classify(ctx, ctx.Err())
		}
		return nil, &fetchError{http.StatusBadGateway, "connect", fmt.Errorf("upstream unreachable: %w", unwrapURLError(err))}
	}
	if resp.StatusCode/100 != 2 {
		resp.Body.Close()
		return nil, &fetchError{http.StatusBadGateway, "status", fmt.Errorf("upstream answered %s", resp.Status)}
	}
	format, ct, ok := upstreamFormat(resp.Header.Get("Content-Type"), e.cfg.FallbackScrapeProtocol)
	if !ok {
		resp.Body.Close()
		return nil, &fetchError{http.StatusBadGateway, "content_type", fmt.Errorf("upstream sent unsupported Content-Type %q", truncate(resp.Header.Get("Content-Type")))}
	}
	var body io.Reader = resp.Body
	switch enc := strings.ToLower(strings.TrimSpace(resp.Header.Get("Content-Encoding"))); enc {
	case "", "identity":
	case "gzip", "x-gzip":
		if p.zr == nil {
			p.zr, err = gzip.NewReader(resp.Body)
		} else {
			err = p.zr.Reset(resp.Body)
		}
		if err != nil {
			resp.Body.Close()
			if ctx.Err() != nil {
				return nil, classify(ctx, ctx.Err())
			}
			return nil, &fetchError{http.StatusBadGateway, "parse", fmt.Errorf("%w: gzip: %w", errParse, err)}
		}
		body = p.zr
	default:
		resp.Body.Close()
		return nil, &fetchError{http.StatusBadGateway, "content_encoding", fmt.Errorf("upstream sent unsupported Content-Encoding %q", truncate(enc))}
	}
	// The cap applies after decompression, so a gzip bomb is cut too.
	body = &capReader{r: body, max: e.relay.cfg.MaxBodyBytes}
	return &upstream{body: body, closer: resp.Body, format: format, ct: ct}, nil
}

func unwrapURLError(err error) error {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err
		}
		err = u
	}
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

// release keeps a pipeline for the next scrape, unless it grew unusually
// large buffers.
func (e *exporter) release(p *pipeline) {
	if p.size() > 8<<20 {
		return
	}
	e.mu.Lock()
	if len(e.idle) < 4 {
		e.idle = append(e.idle, p)
	}
	e.mu.Unlock()
}

// trackingWriter remembers whether anything reached the client, which
// decides between a clean 502 and aborting the response.
type trackingWriter struct {
	w       io.Writer
	started func()
	wrote   bool
}

func (t *trackingWriter) Write(p []byte) (int, error) {
	if len(p) == 0 {
		// An empty write would commit a 200 before we know the outcome.
		return 0, nil
	}
	if !t.wrote {
		t.wrote = true
		t.started()
	}
	return t.w.Write(p)
}

// asyncWriter hands writes to a goroutine that passes them on to w, so
// that compressing one chunk and relaying the next run on two cores: the
// scrape through the relay then takes little longer than the relaying
// alone. It copies each write into one of a few reused buffers.
type asyncWriter struct {
	w      io.Writer
	ch     chan []byte
	free   chan []byte
	done   chan struct{}
	failed atomic.Bool
	err    error // read only after done is closed
}

// errAsyncFailed tells the producer to stop; Close returns the real error.
var errAsyncFailed = errors.New("relay: response write failed")

func newAsyncWriter(w io.Writer) *asyncWriter {
	const buffers = 3
	a := &asyncWriter{w: w, ch: make(chan []byte, buffers), free: make(chan []byte, buffers), done: make(chan struct{})}
	for range buffers {
		a.free <- nil
	}
	go a.run()
	return a
}

func (a *asyncWriter) run() {
	defer close(a.done)
	for b := range a.ch {
		if a.err == nil {
			if _, err := a.w.Write(b); err != nil {
				a.err = err
				a.failed.Store(true)
			}
		}
		a.free <- b[:0]
	}
}

func (a *asyncWriter) Write(p []byte) (int, error) {
	if a.failed.Load() {
		return 0, errAsyncFailed
	}
	b := append(<-a.free, p...)
	a.ch <- b
	return len(p), nil
}

// Close waits until everything was passed on and returns the first error.
func (a *asyncWriter) Close() error {
	close(a.ch)
	<-a.done
	return a.err
}

// response is the body writer of a relay response: optionally gzip behind
// an asyncWriter, in front of a trackingWriter that commits the headers
// with the first byte.
type response struct {
	dst   *trackingWriter
	zw    *gzip.Writer
	async *asyncWriter
	sink  io.Writer
}

func (r *Relay) newResponse(w http.ResponseWriter, req *http.Request, out negotiated) *response {
	gz := acceptsGzip(req)
	resp := &response{dst: &trackingWriter{w: w, started: func() {
		h := w.Header()
		h.Set("Content-Type", out.contentType)
		if gz {
			h.Set("Content-Encoding", "gzip")
		}
		h.Set("Vary", "Accept-Encoding")
		w.WriteHeader(http.StatusOK)
	}}}
	resp.sink = resp.dst
	if gz {
		if zw, ok := r.gzips.Get().(*gzip.Writer); ok {
			zw.Reset(resp.dst)
			resp.zw = zw
		} else {
			resp.zw = newGzipWriter(resp.dst)
		}
		resp.async = newAsyncWriter(resp.zw)
		resp.sink = resp.async
	}
	return resp
}

// finish flushes a response; ok says whether its body is complete.
func (r *Relay) finish(resp *response, ok bool) error {
	var err error
	if resp.async != nil {
		err = resp.async.Close()
		if err == nil && ok {
			err = resp.zw.Close()
		}
		if err == nil {
			resp.zw.Reset(io.Discard)
			r.gzips.Put(resp.zw)
		}
	}
	if err == nil && ok && !resp.dst.wrote {
		// An empty exposition is valid; commit the headers anyway.
		resp.dst.started()
	}
	return err
}

// serve relays one exporter. Failures before the first byte are a 502 (504
// on timeout) with a one-line reason, so Prometheus' up is right per
// exporter; after it, the response is aborted (see ServeHTTP).
func (e *exporter) serve(w http.ResponseWriter, req *http.Request) {
	m := e.relay.metrics
	name := e.cfg.Name
	start := time.Now()
	neg := negotiate(req.Header.Get("Accept"))
	out := neg.format
	timeout := scrapeTimeout(req, e.timeout)
	ctx, cancel := context.WithTimeout(req.Context(), timeout)
	defer cancel()
	p := e.pipeline()
	p.setLabel("")

	fail := func(err error) *fetchError {
		fe := classify(ctx, err)
		e.relay.logger.Debug("Relaying exporter failed", "exporter", name, "err", fe.err)
		e.failed(fe)
		if m != nil {
			m.Up.WithLabelValues(name).Set(0)
			m.UpstreamErrors.WithLabelValues(name, fe.reason).Inc()
			if fe.reason == "parse" {
				m.ParseErrors.WithLabelValues(name).Inc()
			}
			m.ScrapeDuration.WithLabelValues(name).Observe(time.Since(start).Seconds())
		}
		return fe
	}

	up, err := e.fetch(ctx, p, out, timeout)
	if err != nil {
		fe := fail(err)
		e.release(p)
		http.Error(w, oneLine(fe.Error()), fe.status)
		return
	}
	defer up.closer.Close()

	resp := e.relay.newResponse(w, req, neg)
	err = p.relay(up.body, up.format, up.ct, out, neg.esc, resp.sink)
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

// source is one exporter on the aggregate endpoint.
type source struct {
	exporter *exporter
	ch       chan *dto.MetricFamily
	head     *dto.MetricFamily
}

// serveAggregate merges all exporters into one exposition. Exporters are
// scraped concurrently and their families merged by name as they stream
// in: client libraries sort families by name, so a k-way merge joins
// same-named families from different exporters into one valid family while
// holding about one family per exporter in memory. A family whose name
// comes again after other families were written (an unsorted upstream) is
// dropped and counted, since a text exposition may not repeat a family
// (bare samples without metadata may come again, see nameSet for the
// bound); so is a family whose type differs from the one already merged
// under its name. Exporters that fail are left out and reported in the relay
// metrics; one that fails halfway leaves the families it sent before.
//
// Without an exporter label the series of two exporters could be the same
// series, which Prometheus would count as duplicates and partly drop, so
// the endpoint then serves only a relay of a single exporter and answers
// 404 with the reason otherwise.
func (r *Relay) serveAggregate(w http.ResponseWriter, req *http.Request) {
	if r.cfg.Label() == "" && len(r.names) > 1 {
		http.Error(w, errAggregateUnlabeled.Error(), http.StatusNotFound)
		return
	}
	neg := negotiate(req.Header.Get("Accept"))
	out := neg.format
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()

	sources := make([]*source, 0, len(r.names))
	var wg sync.WaitGroup
	for _, name := range r.names {
		s := &source{exporter: r.exporters[name], ch: make(chan *dto.MetricFamily, 2)}
		sources = append(sources, s)
		wg.Go(func() { s.run(ctx, req, out) })
	}
	defer wg.Wait()

	fw := &familyWriter{}
	resp := r.newResponse(w, req, neg)
	fw.reset(resp.sink, out, neg.esc)
	err := r.merge(sources, fw)
	if ferr := r.finish(resp, err == nil); err == nil {
		err = ferr
	}
	if err != nil {
		cancel()
		r.logger.Debug("Writing the aggregate response failed", "err", err)
		// Drain, so every source sees the cancellation and ends.
		for _, s := range sources {
			for range s.ch {
			}
		}
		if resp.dst.wrote {
			panic(http.ErrAbortHandler)
		}
	}
}

// run streams one exporter's families into its channel.
func (s *source) run(ctx context.Context, req *http.Request, out Format) {
	defer close(s.ch)
	e := s.exporter
	m := e.relay.metrics
	start := time.Now()
	timeout := scrapeTimeout(req, e.timeout)
	fctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	p := e.pipeline()
	p.setLabel(e.relay.cfg.Label())
	up, err := e.fetch(fctx, p, out, timeout)
	if err == nil {
		p.samples = 0
		err = p.families(up.body, up.format, up.ct, out, func(mf *dto.MetricFamily) error {
			select {
			case s.ch <- mf:
				return nil
			case <-fctx.Done():
				return fctx.Err()
			}
		})
		up.closer.Close()
	}
	if m != nil {
		m.ScrapeDuration.WithLabelValues(e.cfg.Name).Observe(time.Since(start).Seconds())
	}
	if err != nil {
		fe := classify(fctx, err)
		e.relay.logger.Debug("Relaying exporter failed", "exporter", e.cfg.Name, "err", fe.err)
		e.failed(fe)
		if m != nil {
			m.Up.WithLabelValues(e.cfg.Name).Set(0)
			m.UpstreamErrors.WithLabelValues(e.cfg.Name, fe.reason).Inc()
			if fe.reason == "parse" {
				m.ParseErrors.WithLabelValues(e.cfg.Name).Inc()
			}
		}
		return
	}
	e.succeeded()
	if m != nil {
		m.Up.WithLabelValues(e.cfg.Name).Set(1)
		m.Samples.WithLabelValues(e.cfg.Name).Add(float64(p.samples))
	}
	e.release(p)
}

// merge writes the families of all sources in name order, joining
// same-named ones.
func (r *Relay) merge(sources []*source, fw *familyWriter) error {
	advance := func(s *source) {
		s.head = nil
		if mf, ok := <-s.ch; ok {
			s.head = mf
		}
	}
	for _, s := range sources {
		advance(s)
	}
	written := newNameSet(r.maxNames)
	for {
		var name string
		found := false
		for _, s := range sources {
			if s.head != nil && (!found || s.head.GetName() < name) {
				name, found = s.head.GetName(), true
			}
		}
		if !found {
			return fw.finish()
		}
		var merged *dto.MetricFamily
		for _, s := range sources {
			if s.head == nil || s.head.GetName() != name {
				continue
			}
			switch {
			case !isBare(s.head) && fw.last != name && written.has(name):
				// Bare families (samples without metadata) may come again.
				r.drop(s)
			case merged == nil:
				merged = s.head
			case merged.GetType() != s.head.GetType():
				r.drop(s)
			default:
				merged.Metric = append(merged.Metric, s.head.Metric...)
				if merged.Help == nil {
					merged.Help = s.head.Help
				}
			}
			advance(s)
		}
		if merged == nil {
			continue
		}
		if !isBare(merged) {
			written.add(name)
		}
		if err := fw.write(merged); err != nil {
			return err
		}
	}
}

// maxWrittenNames bounds how many family names the aggregate endpoint
// remembers per response to drop repeated families.
const maxWrittenNames = 1 << 17

// nameSet remembers the names of the families an aggregate response wrote,
// by 64-bit hash, so that memory does not grow with the names' lengths, and
// at most max of them: past that a family that comes again is written
// again (Prometheus reads it; strict parsers would refuse the repeated
// metadata) rather than memory grown without bound.
type nameSet struct {
	seed  maphash.Seed
	m     map[uint64]struct{}
	limit int
}

func newNameSet(limit int) *nameSet {
	return &nameSet{seed: maphash.MakeSeed(), m: make(map[uint64]struct{}), limit: limit}
}

func (s *nameSet) add(name string) {
	if len(s.m) < s.limit {
		s.m[maphash.String(s.seed, name)] = struct{}{}
	}
}

func (s *nameSet) has(name string) bool {
	_, ok := s.m[maphash.String(s.seed, name)]
	return ok
}

func (r *Relay) drop(s *source) {
	if r.metrics != nil {
		r.metrics.Dropped.WithLabelValues(s.exporter.cfg.Name).Inc()
	}
}
