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
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/common/version"
	toolkitweb "github.com/prometheus/exporter-toolkit/web"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/client"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
	"github.com/baremetal-sd/baremetal_sd/tunnel"
	"github.com/baremetal-sd/baremetal_sd/web"
)

// Run runs the agent until ctx ends: it enrolls, serves the relay and its
// own metrics as soon as it has a certificate, and keeps its registration
// and certificate fresh. On the end of ctx it stops accepting connections,
// lets in-flight scrapes finish, deregisters when configured to, and returns
// nil. Errors are returned for what cannot work at all: bad flags, an
// unusable state directory or relay config, a listener that cannot start.
func Run(ctx context.Context, cfg Config) error {
	cfg, err := cfg.normalize()
	if err != nil {
		return err
	}
	logger := cfg.Logger

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		versioncollector.NewCollector("baremetal_sd"),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	metrics := collector.NewAgent(reg, registrationStates())

	webFlags := *cfg.Web
	ownWebConfig := *webFlags.WebConfigFile == ""
	operatorWebConfig := *webFlags.WebConfigFile
	rl := newReloader(cfg, reg, metrics, ownWebConfig, operatorWebConfig)
	initial, err := rl.load()
	if err != nil {
		return err
	}
	if cfg.RelayConfigFile == "" {
		logger.Warn("No --relay.config.file given: relaying no exporters, serving the agent's own metrics only")
	}
	reloadCtx, stopReloads := context.WithCancel(context.Background())
	defer stopReloads()
	go rl.watch(reloadCtx, cfg.Reload)

	waitForCert := ownWebConfig
	if !ownWebConfig {
		if waitForCert, err = checkWebConfig(operatorWebConfig, cfg.StateDir); err != nil {
			return err
		}
	}
	roots, pinned, err := loadRootCAs(cfg.CAFile)
	if err != nil {
		return err
	}
	userAgent := "baremetal_sd-agent/" + version.Version
	anon, err := client.NewClient(client.Config{
		URLs:      cfg.DiscoveryURLs,
		RootCAs:   roots,
		Timeout:   cfg.RequestTimeout,
		UserAgent: userAgent,
	})
	if err != nil {
		return fmt.Errorf("--discovery.url: %w", err)
	}
	if err := checkEnrollment(cfg); err != nil {
		return err
	}
	if err := fileutil.CheckDir(cfg.StateDir); err != nil {
		return fmt.Errorf("--agent.state-dir: %w", err)
	}
	// Bind before talking to the server: an agent that cannot serve must
	// not enroll and leave a target that points at whatever holds its port.
	listeners, err := web.Listen(&webFlags)
	if err != nil {
		return err
	}
	// Tunneled scrapes reach the relay in process, through the listener
	// of the first --web.listen-address; with systemd's sockets the tunnel
	// dials that address.
	var tunneled *tunnel.Listener
	if cfg.Tunnel == TunnelOn && len(listeners) > 0 {
		tunneled = tunnel.NewListener(listeners[0])
		listeners[0] = tunneled
	}
	defer web.CloseAll(listeners)

	// Every input is checked: only now does the agent write its state.
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("--agent.state-dir: %w", err)
	}
	key, created, err := loadOrCreateKey(filepath.Join(cfg.StateDir, KeyFile))
	if err != nil {
		return err
	}
	if created {
		logger.Info("Created a new private key", "path", filepath.Join(cfg.StateDir, KeyFile))
	}

	req := protocol.RegisterRequest{
		Hostname:  cfg.Hostname,
		Address:   cfg.Address,
		Port:      cfg.Port,
		Labels:    initial.labels,
		Exporters: initial.exporters,
		Tunnel:    cfg.Tunnel == TunnelOn,
	}
	lc := newLifecycle(cfg, key, req, metrics)
	lc.pinned = pinned
	lc.updates = rl.updates
	lc.health = rl.exporterHealth
	if lc.client, err = client.NewClient(client.Config{
		URLs:                 cfg.DiscoveryURLs,
		RootCAs:              roots,
		GetClientCertificate: lc.clientCertificate,
		Timeout:              cfg.RequestTimeout,
		UserAgent:            userAgent,
	}); err != nil {
		return err
	}
	lc.anon = anon
	defer lc.client.CloseIdleConnections()
	defer lc.anon.CloseIdleConnections()
	lc.load()
	if lc.cert.Load() == nil && cfg.TokenFile == "" {
		return fmt.Errorf("no certificate in --agent.state-dir %s and no --discovery.token-file to enroll with: create a token on the server (baremetal_sd token create --scope=enroll) and pass its file", cfg.StateDir)
	}

	if ownWebConfig {
		path, err := writeWebConfig(cfg.StateDir)
		if err != nil {
			return err
		}
		webFlags.WebConfigFile = &path
	}

	srv := newHTTPServer(rl.handler(cfg.EnableLifecycle), logger)

	loopCtx, stopLoop := context.WithCancel(context.Background())
	defer stopLoop()
	loopDone := make(chan struct{})
	go func() {
		defer close(loopDone)
		lc.run(loopCtx)
	}()

	// A web config that serves the agent's certificate, or verifies
	// clients with the CA it got at enrollment, cannot be loaded before the
	// agent has them: wait. Any other operator web config starts at once.
	if waitForCert {
		select {
		case <-lc.ready:
		case <-ctx.Done():
			logger.Info("Shutting down before the agent had a certificate")
			stopLoop()
			<-loopDone
			return nil
		}
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- web.ServeListeners(listeners, srv, &webFlags, logger) }()
	if cfg.Tunnel == TunnelOn {
		tc, err := newTunnelClient(cfg, roots, lc, reg, tunneled)
		if err != nil {
			stopLoop()
			<-loopDone
			return err
		}
		tunnelDone := make(chan struct{})
		go func() {
			defer close(tunnelDone)
			tc.Run(loopCtx)
		}()
		defer func() { <-tunnelDone }()
	}
	select {
	case err := <-serveErr:
		stopLoop()
		<-loopDone
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}

	logger.Info("Shutting down")
	stopLoop()
	// Deregister while in-flight scrapes drain, not after: a scrape that
	// takes the whole shutdown timeout would otherwise leave no time to
	// deregister, and the host would stay in http_sd, failing, until its TTL
	// runs out. Each gets its own ShutdownTimeout.
	deregistered := make(chan struct{})
	go func() {
		defer close(deregistered)
		<-loopDone // the loop owns the lifecycle until it returns
		if cfg.DeregisterOnShutdown {
			ctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
			defer cancel()
			lc.deregister(ctx)
		}
	}()
	shutdownCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Warn("In-flight requests did not finish before the shutdown timeout", "err", err)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Warn("Listener failed during shutdown", "err", err)
	}
	<-deregistered
	return nil
}

// newHTTPServer builds the HTTP server the agent serves handler with;
// web.Serve adds TLS and basic auth from the web config.
func newHTTPServer(handler http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
}

// scrapersOnly refuses requests whose client certificate is not a
// scraper's. The agent's own web config accepts any certificate from the
// fleet's CA, and every enrolled host holds one: without this check any
// host could read every other host's exporters. Prometheus scrapes with a
// `cert issue --role=discovery` certificate; admin certificates may too.
func scrapersOnly(next http.Handler, metrics *collector.Agent) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		role := roleOf(r)
		if role != ca.RoleDiscovery && role != ca.RoleAdmin {
			metrics.RefusedRequests.WithLabelValues(string(role)).Inc()
			http.Error(w, "forbidden: a client certificate of role discovery or admin is required to scrape this agent", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// newHandler routes the relay, the agent's metrics and the landing page.
func newHandler(reg *prometheus.Registry, relayHandler http.Handler, exporters []protocol.Exporter, logger *slog.Logger) (http.Handler, error) {
	mux := http.NewServeMux()
	if relayHandler != nil {
		mux.Handle("/exporters/", relayHandler)
	}
	mux.Handle("GET "+protocol.AgentMetricsPath, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(logger.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 10,
		Registry:            reg,
	}))
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("Healthy.\n"))
	})
	links := make([]toolkitweb.LandingLinks, 0, len(exporters)+2)
	for _, e := range exporters {
		links = append(links, toolkitweb.LandingLinks{Address: e.Path, Text: e.Name, Description: "relayed exporter"})
	}
	if len(exporters) > 0 {
		links = append(links, toolkitweb.LandingLinks{Address: "/exporters/metrics", Text: "All exporters", Description: "every relayed exporter in one scrape"})
	}
	links = append(links, toolkitweb.LandingLinks{Address: protocol.AgentMetricsPath, Text: "Metrics", Description: "the agent's own telemetry"})
	landing, err := toolkitweb.NewLandingPage(toolkitweb.LandingConfig{
		Name:        "baremetal_sd agent",
		Description: "Relays this host's exporters to Prometheus over TLS and keeps it registered with baremetal_sd",
		Version:     version.Info(),
		Links:       links,
	})
	if err != nil {
		return nil, fmt.Errorf("landing page: %w", err)
	}
	mux.Handle("/", landing)
	return mux, nil
}
