package relay

import (
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/config"

	"github.com/baremetal-sd/baremetal_sd/collector"
)

// aggregatePath serves every exporter merged into one exposition.
const aggregatePath = "/exporters/metrics"

// Relay serves the exporters of a relay configuration over HTTP.
type Relay struct {
	cfg       *Config
	logger    *slog.Logger
	metrics   *collector.Relay
	exporters map[string]*exporter
	names     []string
}

type exporter struct {
	cfg     ExporterConfig
	client  *http.Client
	relay   *Relay
	mu      sync.Mutex
	idle    []*pipeline // reused between scrapes: buffers keep their size
	timeout time.Duration
}

// New builds a relay with one HTTP client per exporter.
func New(cfg *Config, logger *slog.Logger, metrics *collector.Relay) (*Relay, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &Relay{cfg: cfg, logger: logger, metrics: metrics, exporters: make(map[string]*exporter, len(cfg.Exporters))}
	for _, ec := range cfg.Exporters {
		client, err := config.NewClientFromConfig(ec.HTTPClientConfig, "relay_"+ec.Name)
		if err != nil {
			return nil, fmt.Errorf("exporter %q: http client: %w", ec.Name, err)
		}
		r.exporters[ec.Name] = &exporter{cfg: ec, client: client, relay: r, timeout: time.Duration(ec.Timeout)}
		r.names = append(r.names, ec.Name)
		if metrics != nil {
			metrics.Up.WithLabelValues(ec.Name)
		}
	}
	return r, nil
}

// ExporterNames lists the configured exporters in configuration order.
func (r *Relay) ExporterNames() []string { return append([]string(nil), r.names...) }

// ServeHTTP serves /exporters/<name>/metrics and /exporters/metrics.
func (r *Relay) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if req.URL.Path == aggregatePath {
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
	e.serve(w, req)
}

// scrapeTimeout is the configured timeout, shortened to what the scraper
// is willing to wait.
func scrapeTimeout(req *http.Request, configured time.Duration) time.Duration {
	if s := req.Header.Get("X-Prometheus-Scrape-Timeout-Seconds"); s != "" {
		if v, err := strconv.ParseFloat(s, 64); err == nil && v > 0 {
			if d := time.Duration(v * float64(time.Second)); d < configured {
				return d
			}
		}
	}
	return configured
}

func acceptsGzip(req *http.Request) bool {
	for _, part := range strings.Split(req.Header.Get("Accept-Encoding"), ",") {
		enc, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if strings.EqualFold(strings.TrimSpace(enc), "gzip") {
			return strings.ReplaceAll(params, " ", "") != "q=0"
		}
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
	case errors.Is(err, errParse):
		return &fetchError{http.StatusBadGateway, "parse", err}
	}
	return &fetchError{http.StatusBadGateway, "body", fmt.Errorf("reading upstream body: %w", err)}
}

// fetch asks the exporter for a format compatible with out.
func (e *exporter) fetch(ctx context.Context, out Format, timeout time.Duration) (*upstream, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, e.cfg.URL, nil)
	if err != nil {
		return nil, &fetchError{http.StatusBadGateway, "request", err}
	}
	req.Header.Set("Accept", upstreamAccept(out))
	if e.cfg.EnableCompression {
		req.Header.Set("Accept-Encoding", "gzip")
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
	format, ct, ok := parseContentType(resp.Header.Get("Content-Type"))
	if !ok {
		resp.Body.Close()
		return nil, &fetchError{http.StatusBadGateway, "content_type", fmt.Errorf("upstream sent unsupported Content-Type %q", truncate(resp.Header.Get("Content-Type")))}
	}
	var body io.Reader = resp.Body
	if strings.EqualFold(resp.Header.Get("Content-Encoding"), "gzip") {
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			resp.Body.Close()
			return nil, &fetchError{http.StatusBadGateway, "parse", fmt.Errorf("upstream gzip: %w", err)}
		}
		body = zr
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

func truncate(s string) string {
	if len(s) > 100 {
		return s[:100] + "..."
	}
	return s
}

func (e *exporter) pipeline() *pipeline {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n := len(e.idle); n > 0 {
		p := e.idle[n-1]
		e.idle = e.idle[:n-1]
		p.samples = 0
		return p
	}
	return newPipeline(e.cfg.Name, e.relay.cfg.Label(), e.cfg.MetricRelabelConfigs, e.relay.cfg.MaxLineBytes)
}

func (e *exporter) release(p *pipeline) {
	// Don't keep the buffers of an unusually large family around.
	if cap(p.buf) > 8<<20 || cap(p.frame) > 8<<20 {
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

// serve relays one exporter. Failures before the first byte are a 502 (504
// on timeout) with a one-line reason, so Prometheus' up is right per
// exporter. A failure after bytes went out cannot change the status any
// more; the response is then aborted, so the scraper sees a failed scrape
// rather than a truncated body that parses.
func (e *exporter) serve(w http.ResponseWriter, req *http.Request) {
	m := e.relay.metrics
	name := e.cfg.Name
	start := time.Now()
	out := negotiate(req.Header.Get("Accept"))
	timeout := scrapeTimeout(req, e.timeout)
	ctx, cancel := context.WithTimeout(req.Context(), timeout)
	defer cancel()

	fail := func(fe *fetchError) {
		if m != nil {
			m.Up.WithLabelValues(name).Set(0)
			m.UpstreamErrors.WithLabelValues(name, fe.reason).Inc()
			if fe.reason == "parse" {
				m.ParseErrors.WithLabelValues(name).Inc()
			}
		}
		e.relay.logger.Debug("Relaying exporter failed", "exporter", name, "err", fe.err)
	}

	up, err := e.fetch(ctx, out, timeout)
	if err != nil {
		fe := classify(ctx, err)
		fail(fe)
		http.Error(w, fe.Error(), fe.status)
		return
	}
	defer up.closer.Close()

	gz := acceptsGzip(req)
	var zw *gzip.Writer
	dst := &trackingWriter{w: w, started: func() {
		h := w.Header()
		h.Set("Content-Type", out.ContentType())
		if gz {
			h.Set("Content-Encoding", "gzip")
		}
		h.Set("Vary", "Accept-Encoding")
		w.WriteHeader(http.StatusOK)
	}}
	var sink io.Writer = dst
	if gz {
		zw = newGzipWriter(dst)
		sink = zw
	}
	p := e.pipeline()
	err = p.relay(up.body, up.format, up.ct, out, sink, func() {})
	if err == nil && zw != nil {
		err = zw.Close()
	}
	if err == nil && !dst.wrote {
		// An empty exposition is valid; commit the headers anyway.
		dst.started()
	}
	if err != nil {
		fe := classify(ctx, err)
		fail(fe)
		if dst.wrote {
			panic(http.ErrAbortHandler)
		}
		http.Error(w, fe.Error(), fe.status)
		return
	}
	e.relay.release(e, p)
	if m != nil {
		m.Up.WithLabelValues(name).Set(1)
		m.Samples.WithLabelValues(name).Add(float64(p.samples))
		m.ScrapeDuration.WithLabelValues(name).Observe(time.Since(start).Seconds())
	}
}

func (r *Relay) release(e *exporter, p *pipeline) { e.release(p) }

// sourceFamily is one family from one exporter on the aggregate endpoint.
type source struct {
	exporter *exporter
	ch       chan *dto.MetricFamily
	err      error // set before ch is closed
	head     *dto.MetricFamily
}

// serveAggregate merges all exporters into one exposition. Exporters are
// scraped concurrently and their families merged by name as they stream
// in: client libraries sort families by name, so a k-way merge joins
// same-named families from different exporters into one valid family while
// holding about one family per exporter in memory. A family name that comes
// again after it was written (unsorted upstream) is dropped and counted,
// since a text exposition may not repeat a family. Exporters that fail are
// left out and reported in the relay metrics.
func (r *Relay) serveAggregate(w http.ResponseWriter, req *http.Request) {
	out := negotiate(req.Header.Get("Accept"))
	ctx, cancel := context.WithCancel(req.Context())
	defer cancel()

	sources := make([]*source, 0, len(r.names))
	var wg sync.WaitGroup
	for _, name := range r.names {
		s := &source{exporter: r.exporters[name], ch: make(chan *dto.MetricFamily, 2)}
		sources = append(sources, s)
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.run(ctx, req, out)
		}()
	}
	defer wg.Wait()

	h := w.Header()
	h.Set("Content-Type", out.ContentType())
	h.Set("Vary", "Accept-Encoding")
	var sink io.Writer = w
	var zw *gzip.Writer
	if acceptsGzip(req) {
		h.Set("Content-Encoding", "gzip")
		zw = newGzipWriter(w)
		sink = zw
	}
	err := r.merge(sources, sink, out)
	if err == nil {
		err = finish(sink, out)
	}
	if err == nil && zw != nil {
		err = zw.Close()
	}
	if err != nil {
		cancel()
		r.logger.Debug("Writing aggregate response failed", "err", err)
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
	up, err := e.fetch(fctx, out, timeout)
	if err == nil {
		p := e.pipeline()
		err = p.families(up.body, up.format, up.ct, func(mf *dto.MetricFamily) error {
			select {
			case s.ch <- mf:
				return nil
			case <-fctx.Done():
				return fctx.Err()
			}
		})
		up.closer.Close()
		if err == nil {
			if m != nil {
				m.Samples.WithLabelValues(e.cfg.Name).Add(float64(p.samples))
			}
			e.release(p)
		}
	}
	if m == nil {
		return
	}
	if err != nil {
		fe := classify(fctx, err)
		s.err = fe
		m.Up.WithLabelValues(e.cfg.Name).Set(0)
		m.UpstreamErrors.WithLabelValues(e.cfg.Name, fe.reason).Inc()
		return
	}
	m.Up.WithLabelValues(e.cfg.Name).Set(1)
	m.ScrapeDuration.WithLabelValues(e.cfg.Name).Observe(time.Since(start).Seconds())
}

// merge writes the families of all sources, joining same-named ones.
func (r *Relay) merge(sources []*source, w io.Writer, out Format) error {
	advance := func(s *source) {
		s.head = nil
		if mf, ok := <-s.ch; ok {
			s.head = mf
		}
	}
	for _, s := range sources {
		advance(s)
	}
	written := make(map[string]bool)
	for {
		var name string
		found := false
		for _, s := range sources {
			if s.head != nil && (!found || s.head.GetName() < name) {
				name, found = s.head.GetName(), true
			}
		}
		if !found {
			return nil
		}
		var merged *dto.MetricFamily
		for _, s := range sources {
			if s.head == nil || s.head.GetName() != name {
				continue
			}
			switch {
			case written[name]:
				r.drop(s)
			case merged == nil:
				merged = s.head
			case merged.GetType() != s.head.GetType():
				r.drop(s)
			default:
				merged.Metric = append(merged.Metric, s.head.Metric...)
			}
			advance(s)
		}
		if merged == nil {
			continue
		}
		written[name] = true
		if err := encodeFamily(w, merged, out); err != nil {
			return err
		}
	}
}

func (r *Relay) drop(s *source) {
	if r.metrics != nil {
		r.metrics.Dropped.WithLabelValues(s.exporter.cfg.Name).Inc()
	}
}
