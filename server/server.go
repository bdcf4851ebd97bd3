package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	promconfig "github.com/prometheus/common/config"
	toolkitweb "github.com/prometheus/exporter-toolkit/web"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/web"
)

// Files the server keeps in its data directory.
const (
	RegistryFile  = "registry.db"
	WebConfigFile = "web-config.yml"
)

// Config is everything the server role needs; main fills it from flags.
type Config struct {
	DataDir string
	// Web holds the listen addresses and the optional web config file. Without
	// a web config the server writes one into DataDir that serves its own
	// certificate and verifies client certificates from its CA.
	Web *toolkitweb.FlagConfig
	// ServerNames are the DNS names and IPs of the serving certificate.
	ServerNames []string
	// StorageBackend is "bolt" (default), "etcd" or "memory".
	StorageBackend string
	// Etcd configures the etcd backend: several server replicas sharing
	// one etcd cluster (and the same CA and token key files).
	Etcd          EtcdConfig
	AgentTTL      time.Duration
	Retention     time.Duration
	CertTTL       time.Duration
	RenewGrace    time.Duration
	FlushInterval time.Duration
	SDFilePath    string
	AnonymousSD   bool
	Logger        *slog.Logger
}

// EtcdConfig is the etcd backend's connection settings.
type EtcdConfig struct {
	Endpoints    []string
	Prefix       string
	CAFile       string
	CertFile     string
	KeyFile      string
	Username     string
	PasswordFile string
	Timeout      time.Duration
}

// Run serves until ctx ends, then shuts down gracefully: in-flight requests
// finish, batched heartbeats are flushed and the store is closed.
func Run(ctx context.Context, cfg Config) error {
	logger := cfg.Logger
	authority, created, err := ca.LoadOrCreate(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("certificate authority: %w", err)
	}
	if created {
		logger.Info("Created a new certificate authority", "path", filepath.Join(cfg.DataDir, "ca.crt"))
	}
	key, created, err := ca.LoadOrCreateTokenKey(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("token key: %w", err)
	}
	if created {
		logger.Info("Created a new token signing key", "path", filepath.Join(cfg.DataDir, "token.key"))
	}
	webFlags, err := prepareWebConfig(cfg, authority)
	if err != nil {
		return err
	}

	store, err := openStore(ctx, cfg)
	if err != nil {
		return err
	}
	defer store.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		versioncollector.NewCollector("baremetal_sd"),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	metrics := collector.NewServer(reg)

	registry := discovery.NewRegistry(discovery.RegistryConfig{
		Store:         store,
		TTL:           cfg.AgentTTL,
		Retention:     cfg.Retention,
		FlushInterval: cfg.FlushInterval,
		// Revoked records must outlive every certificate and the renewal grace
		// window, or a revoked host could come back by renewing.
		RevocationRetention: cfg.CertTTL + cfg.RenewGrace + 24*time.Hour,
		Metrics:             metrics,
		Logger:              logger,
	})
	if err := registry.Load(ctx); err != nil {
		return err
	}
	// Loading decoded every record once. Hand that garbage back to the
	// kernel now rather than have it count as resident memory until the
	// scavenger gets to it: with 100,000 agents it is more than the
	// registry itself.
	debug.FreeOSMemory()
	// A shared store reports what other replicas change; the registry
	// applies it so every replica serves the same http_sd.
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	if events := store.Watch(watchCtx); events != nil {
		go func() {
			for ev := range events {
				registry.ApplyEvent(ev)
			}
		}()
	}
	cache := discovery.NewSDCache(registry, metrics)
	api := discovery.NewAPI(discovery.APIConfig{
		Registry:    registry,
		Cache:       cache,
		Store:       store,
		CA:          authority,
		Tokens:      ca.NewTokens(key),
		CertTTL:     cfg.CertTTL,
		RenewGrace:  cfg.RenewGrace,
		AnonymousSD: cfg.AnonymousSD,
		Metrics:     metrics,
		Logger:      logger,
	})

	mux := http.NewServeMux()
	api.Routes(mux)
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:            slog.NewLogLogger(logger.Handler(), slog.LevelError),
		ErrorHandling:       promhttp.ContinueOnError,
		MaxRequestsInFlight: 10,
		Registry:            reg,
	}))
	mux.HandleFunc("GET /-/healthy", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("Healthy.\n"))
	})
	mux.HandleFunc("GET /-/ready", func(w http.ResponseWriter, r *http.Request) {
		if !registry.Ready() {
			http.Error(w, "Registry not loaded.", http.StatusServiceUnavailable)
			return
		}
		if h, ok := store.(interface{ Healthy(context.Context) error }); ok {
			hctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
			err := h.Healthy(hctx)
			cancel()
			if err != nil {
				metrics.StoreUp.Set(0)
				// Still serving the last known http_sd, but not accepting
				// registrations: not ready.
				http.Error(w, "Store unreachable.", http.StatusServiceUnavailable)
				return
			}
			metrics.StoreUp.Set(1)
		}
		_, _ = w.Write([]byte("Ready.\n"))
	})
	showFleet := fleetReader
	if cfg.AnonymousSD {
		showFleet = func(*http.Request) bool { return true }
	}
	mux.Handle("/", &statusPage{registry: registry, now: time.Now, logger: logger, showFleet: showFleet})

	runCtx, stopLoops := context.WithCancel(context.Background())
	loopsDone := make(chan struct{})
	go func() {
		defer close(loopsDone)
		registry.Run(runCtx)
	}()
	if cfg.SDFilePath != "" {
		fw := &discovery.FileSDWriter{Path: cfg.SDFilePath, Cache: cache, Registry: registry, Metrics: metrics, Logger: logger}
		go fw.Run(runCtx)
	}

	srv := &http.Server{
		// basic_auth_users in the web config guard the status page only:
		// agents and Prometheus authenticate with certificates and tokens.
		Handler: &web.BasicAuthScope{
			Handler: mux,
			Protect: func(r *http.Request) bool { return r.URL.Path == "/" },
		},
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- web.ListenAndServe(srv, webFlags, logger) }()

	select {
	case err = <-serveErr:
		err = fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
		logger.Info("Shutting down")
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if serr := srv.Shutdown(shutdownCtx); serr != nil {
			logger.Warn("Shutdown did not finish cleanly", "err", serr)
		}
		cancel()
		if serr := <-serveErr; serr != nil && !errors.Is(serr, http.ErrServerClosed) {
			err = fmt.Errorf("serve: %w", serr)
		}
	}
	stopLoops()
	<-loopsDone
	return err
}

func openStore(ctx context.Context, cfg Config) (discovery.Store, error) {
	switch cfg.StorageBackend {
	case "etcd":
		return openEtcd(ctx, cfg)
	case "", "bolt":
		s, err := discovery.OpenBoltStore(filepath.Join(cfg.DataDir, RegistryFile), discovery.BoltOptions{Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("open registry: %w", err)
		}
		return s, nil
	case "memory":
		cfg.Logger.Warn("Using the in-memory store: registrations are lost on restart")
		return discovery.NewMemoryStore(), nil
	}
	return nil, fmt.Errorf("unknown storage backend %q", cfg.StorageBackend)
}

func openEtcd(ctx context.Context, cfg Config) (discovery.Store, error) {
	e := cfg.Etcd
	// Repeated flags and comma-separated lists (etcdctl's style) both work.
	var endpoints []string
	for _, v := range e.Endpoints {
		for _, ep := range strings.Split(v, ",") {
			if ep = strings.TrimSpace(ep); ep != "" {
				endpoints = append(endpoints, ep)
			}
		}
	}
	e.Endpoints = endpoints
	if len(e.Endpoints) == 0 {
		return nil, fmt.Errorf("--storage.backend=etcd needs --etcd.endpoints")
	}
	opts := discovery.EtcdOptions{
		Endpoints:      e.Endpoints,
		Prefix:         e.Prefix,
		RequestTimeout: e.Timeout,
		Username:       e.Username,
		Logger:         cfg.Logger,
	}
	if e.CAFile != "" || e.CertFile != "" {
		tlsCfg, err := promconfig.NewTLSConfig(&promconfig.TLSConfig{CAFile: e.CAFile, CertFile: e.CertFile, KeyFile: e.KeyFile})
		if err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
		opts.TLS = tlsCfg
	}
	if e.PasswordFile != "" {
		pw, err := os.ReadFile(e.PasswordFile)
		if err != nil {
			return nil, fmt.Errorf("etcd password: %w", err)
		}
		opts.Password = strings.TrimSpace(string(pw))
	}
	s, err := discovery.OpenEtcdStore(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("open etcd registry: %w", err)
	}
	cfg.Logger.Info("Using the etcd registry", "endpoints", strings.Join(e.Endpoints, ","), "replica", s.ReplicaID())
	return s, nil
}

// prepareWebConfig returns the web flags to serve with. Without an operator
// web config it writes one that serves the auto-created certificate and
// verifies client certificates from our CA when they are given; with one, it
// checks that TLS is on, because the server never speaks plain HTTP.
func prepareWebConfig(cfg Config, authority *ca.Authority) (*toolkitweb.FlagConfig, error) {
	flags := *cfg.Web
	if flags.WebConfigFile != nil && *flags.WebConfigFile != "" {
		c, err := web.LoadConfig(*flags.WebConfigFile)
		if err != nil {
			return nil, fmt.Errorf("web config: %w", err)
		}
		if c.TLSConfig.TLSCertPath == "" && c.TLSConfig.TLSCert == "" {
			return nil, fmt.Errorf("web config %s has no tls_server_config: the server serves TLS only", *flags.WebConfigFile)
		}
		if c.TLSConfig.ClientAuth != "VerifyClientCertIfGiven" && c.TLSConfig.ClientAuth != "RequireAndVerifyClientCert" {
			cfg.Logger.Warn("Web config does not verify client certificates: agents cannot heartbeat or renew, and Prometheus needs a token", "client_auth_type", c.TLSConfig.ClientAuth)
		}
		return &flags, nil
	}
	if _, _, err := authority.EnsureServingCert(cfg.DataDir, cfg.ServerNames, 365*24*time.Hour); err != nil {
		return nil, fmt.Errorf("serving certificate: %w", err)
	}
	path := filepath.Join(cfg.DataDir, WebConfigFile)
	content := strings.Join([]string{
		"# Written by baremetal_sd server because no --web.config.file was given.",
		"# Pass your own web config to change it; this file is rewritten on start.",
		"tls_server_config:",
		"  cert_file: server.crt",
		"  key_file: server.key",
		"  client_auth_type: VerifyClientCertIfGiven",
		"  client_ca_file: ca.crt",
		"",
	}, "\n")
	if old, err := os.ReadFile(path); err != nil || string(old) != content {
		if err := ca.WriteFileAtomic(path, []byte(content), 0o600); err != nil {
			return nil, fmt.Errorf("write web config: %w", err)
		}
	}
	flags.WebConfigFile = &path
	return &flags, nil
}
