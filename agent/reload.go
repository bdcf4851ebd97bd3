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

package agent

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/relay"
	"github.com/baremetal-sd/baremetal_sd/web"
)

// ReloadPath re-reads the configuration on POST, with
// --web.enable-lifecycle, as in Prometheus.
const ReloadPath = "/-/reload"

// registration is the part of a registration a reload can change.
type registration struct {
	labels    map[string]string
	exporters []protocol.Exporter
}

// generation is everything built from one version of the configuration
// files. A reload builds a whole new one and swaps it in, or keeps the old
// one: never a mix.
type generation struct {
	handler   http.Handler
	relay     *relay.Relay // nil without a relay config
	reg       registration
	exporters []string
}

// reloader owns the reloadable configuration: the relay config (exporters,
// relabel rules, HTTP client options, labels) and the operator's web
// config. The web config is re-read by the listener whenever the file
// changes (see web.ListenAndServe); a reload validates it, so that a broken
// file fails the reload and is reported rather than found at the next
// handshake.
type reloader struct {
	cfg          Config
	logger       *slog.Logger
	reg          *prometheus.Registry
	agentMetrics *collector.Agent
	// relayMetrics are created once: the series of exporters that stay
	// across a reload keep counting.
	relayMetrics *collector.Relay
	// scrapers restricts the agent to scraper certificates (the agent's
	// own web config); reloads over HTTP then need an admin certificate.
	scrapers bool
	// webConfigFile is the operator's web config; empty for the agent's
	// own, which the agent writes and never needs validating.
	webConfigFile string

	reloads *collector.Reload

	// current is what the listener serves; updates takes changed
	// registrations to the lifecycle, newest only.
	current atomic.Pointer[generation]
	updates chan registration
	mu      sync.Mutex // serializes reloads
}

func newReloader(cfg Config, reg *prometheus.Registry, agentMetrics *collector.Agent, scrapers bool, webConfigFile string) *reloader {
	r := &reloader{
		cfg:           cfg,
		logger:        cfg.Logger,
		reg:           reg,
		agentMetrics:  agentMetrics,
		relayMetrics:  collector.NewRelay(reg),
		scrapers:      scrapers,
		webConfigFile: webConfigFile,
		reloads:       collector.NewReload(reg, "agent"),
		updates:       make(chan registration, 1),
	}
	reg.MustRegister(&infoCollector{
		hostname: cfg.Hostname,
		labels: func() map[string]string {
			if g := r.current.Load(); g != nil {
				return g.reg.labels
			}
			return cfg.Labels
		},
	})
	return r
}

// load builds the first generation; an error is fatal at start.
func (r *reloader) load() (registration, error) {
	g, err := r.build()
	if err != nil {
		return registration{}, err
	}
	r.current.Store(g)
	r.setMemoryLimit(g)
	r.succeeded()
	return g.reg, nil
}

// reload re-reads the configuration files and swaps the new generation in.
// On any error the running configuration stays, the error is logged and
// returned, and the reload metrics say so.
func (r *reloader) reload() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	g, err := r.build()
	if err != nil {
		r.reloads.Failed()
		r.logger.Error("Failed to reload the configuration, keeping the previous one", "err", err)
		return err
	}
	if cur := r.current.Load(); cur.relay != nil && g.relay != nil {
		g.relay.InheritHealth(cur.relay)
	}
	old := r.current.Swap(g)
	for _, name := range old.exporters {
		if !slices.Contains(g.exporters, name) {
			r.forgetExporter(name)
		}
	}
	if old.relay != nil {
		// Scrapes in flight finish with the old relay; its idle
		// connections to the exporters are not needed any more.
		old.relay.CloseIdleConnections()
	}
	if !sameRegistration(old.reg, g.reg) {
		select {
		case <-r.updates: // replaced by the newer one
		default:
		}
		r.updates <- g.reg
	}
	r.setMemoryLimit(g)
	r.succeeded()
	r.logger.Info("Reloaded the configuration", "exporters", len(g.exporters), "labels", len(g.reg.labels))
	return nil
}

// setMemoryLimit sets the soft memory limit for generation g: the
// configured one plus what the relay's series caches may hold, which is
// live data: a limit below it would keep the collector running.
func (r *reloader) setMemoryLimit(g *generation) {
	if r.cfg.MemoryLimit <= 0 {
		return
	}
	limit := r.cfg.MemoryLimit
	if g.relay != nil {
		limit += int64(g.relay.SeriesCacheBytes())
	}
	debug.SetMemoryLimit(limit)
}

func (r *reloader) succeeded() {
	r.reloads.Succeeded()
}

// forgetExporter drops the relay series of an exporter that is no longer
// configured, so that a removed exporter does not stay "down" forever.
func (r *reloader) forgetExporter(name string) {
	m := r.relayMetrics
	m.Up.DeleteLabelValues(name)
	m.ScrapeDuration.DeleteLabelValues(name)
	m.Samples.DeleteLabelValues(name)
	m.ParseErrors.DeleteLabelValues(name)
	m.Dropped.DeleteLabelValues(name)
	m.UpstreamErrors.DeletePartialMatch(prometheus.Labels{"exporter": name})
}

// build reads and validates every reloadable file and builds what serves
// them, touching nothing that runs.
func (r *reloader) build() (*generation, error) {
	if r.webConfigFile != "" {
		if _, err := web.LoadConfig(r.webConfigFile); err != nil {
			return nil, fmt.Errorf("--web.config.file: %w", err)
		}
	}
	// Clone keeps nil as nil: the registration digest of an agent without
	// labels must not change by the reload machinery alone.
	g := &generation{reg: registration{labels: maps.Clone(r.cfg.Labels)}}
	var relayHandler http.Handler
	if r.cfg.RelayConfigFile != "" {
		rc, err := relay.LoadConfig(r.cfg.RelayConfigFile)
		if err != nil {
			return nil, err
		}
		if len(rc.Labels) > 0 && g.reg.labels == nil {
			g.reg.labels = make(map[string]string, len(rc.Labels))
		}
		for k, v := range rc.Labels {
			if _, ok := g.reg.labels[k]; ok {
				return nil, fmt.Errorf("relay config %s: label %q is also set with --agent.label; set it in one place", r.cfg.RelayConfigFile, k)
			}
			g.reg.labels[k] = v
		}
		rl, err := relay.New(rc, r.logger, r.relayMetrics)
		if err != nil {
			return nil, fmt.Errorf("relay: %w", err)
		}
		g.relay, relayHandler = rl, rl
		g.exporters = rl.ExporterNames()
	}
	for _, name := range g.exporters {
		g.reg.exporters = append(g.reg.exporters, protocol.Exporter{Name: name, Path: relay.ExporterPath(name)})
	}
	// The server refuses what it cannot list; say so now, not in a
	// registration error later. This also refuses the reserved name "agent".
	if err := protocol.ValidateExporters(g.reg.exporters); err != nil {
		return nil, fmt.Errorf("relay config: %w", err)
	}
	if err := protocol.ValidateLabels(g.reg.labels); err != nil {
		return nil, fmt.Errorf("agent labels: %w", err)
	}
	h, err := newHandler(r.reg, relayHandler, g.reg.exporters, r.logger)
	if err != nil {
		return nil, err
	}
	g.handler = h
	return g, nil
}

// handler serves the current generation, and /-/reload when lifecycle is
// set. Requests already being served finish with the generation they
// started with.
func (r *reloader) handler(lifecycle bool) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/", http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.current.Load().handler.ServeHTTP(w, req)
	}))
	if lifecycle {
		// A browser that holds an admin certificate would present it to
		// any site's request: refuse requests from other origins.
		mux.Handle("POST "+ReloadPath, http.NewCrossOriginProtection().Handler(http.HandlerFunc(r.serveReload)))
		mux.HandleFunc(ReloadPath, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Allow", http.MethodPost)
			http.Error(w, "only POST is allowed", http.StatusMethodNotAllowed)
		})
	}
	var h http.Handler = mux
	if r.scrapers {
		h = scrapersOnly(h, r.agentMetrics)
	}
	return h
}

// serveReload reloads as Prometheus' /-/reload does: 200 when the new
// configuration is in force, 500 with the reason when the old one stays.
// Under the agent's own web config only an admin certificate may reload: a
// scraper's certificate is meant for reading.
func (r *reloader) serveReload(w http.ResponseWriter, req *http.Request) {
	if r.scrapers && roleOf(req) != ca.RoleAdmin {
		r.agentMetrics.RefusedRequests.WithLabelValues(string(roleOf(req))).Inc()
		http.Error(w, "forbidden: reloading needs a client certificate of role admin", http.StatusForbidden)
		return
	}
	if err := r.reload(); err != nil {
		http.Error(w, fmt.Sprintf("failed to reload config: %v", err), http.StatusInternalServerError)
		return
	}
	_, _ = w.Write([]byte("Reloaded.\n"))
}

// roleOf is the role of the request's client certificate, "none" without
// one.
func roleOf(req *http.Request) ca.Role {
	if req.TLS != nil && len(req.TLS.PeerCertificates) > 0 {
		if got, _, err := ca.Identify(req.TLS.PeerCertificates[0]); err == nil {
			return got
		}
	}
	return ca.Role("none")
}

func sameRegistration(a, b registration) bool {
	return maps.Equal(a.labels, b.labels) && slices.Equal(a.exporters, b.exporters)
}

// update takes a changed registration from a reload into the next
// registration: at once when the agent holds a certificate the server
// accepts, with the next enrollment otherwise.
func (l *lifecycle) update(reg registration) {
	l.req.Labels, l.req.Exporters = reg.labels, reg.exporters
	l.digest = registrationDigest(&l.req)
	if l.valid(time.Now()) && !l.rejected {
		l.needRegister = true
		l.retryAt = time.Now()
		l.failures[actRegister] = 0
	}
}

// watch reloads on every receive from reloads until ctx ends.
func (r *reloader) watch(ctx context.Context, reloads <-chan os.Signal) {
	if reloads == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-reloads:
			_ = r.reload() // logged and counted by reload
		}
	}
}
