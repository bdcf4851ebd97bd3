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

package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	versioncollector "github.com/prometheus/client_golang/prometheus/collectors/version"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	promconfig "github.com/prometheus/common/config"
	toolkitweb "github.com/prometheus/exporter-toolkit/web"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/collector"
	"github.com/baremetal-sd/baremetal_sd/discovery/api"
	"github.com/baremetal-sd/baremetal_sd/discovery/httpsd"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
	"github.com/baremetal-sd/baremetal_sd/discovery/store"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/bolt"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/etcd"
	"github.com/baremetal-sd/baremetal_sd/discovery/store/memory"
	"github.com/baremetal-sd/baremetal_sd/internal/fileutil"
	"github.com/baremetal-sd/baremetal_sd/tunnel"
	"github.com/baremetal-sd/baremetal_sd/web"
)

// Files the server keeps in its data directory.
const (
	RegistryFile  = "registry.db"
	WebConfigFile = "web-config.yml"
)

// handshakesPerCPU bounds the TLS handshakes the server computes at once
// (web.WithHandshakeLimit), per CPU: a handshake is mostly CPU on the
// server, with one round trip to the client in the middle, during which
// the others of the CPU run.
const handshakesPerCPU = 64

// Config is everything the server role needs; main fills it from flags.
type Config struct {
	DataDir string
	// Web holds the listen addresses and the optional web config file. Without
	// a web config the server writes one into DataDir that serves its own
	// certificate and verifies client certificates from its CA.
	Web *toolkitweb.FlagConfig
	// ServerNames are the DNS names and IPs of the serving certificate.
	ServerNames []string
	// ReservedNames are names no agent may register (loopback names
	// aside): the --tls.server-name names an operator gave, one of which
	// Prometheus' proxy_url names for tunnels (docs/tunnels.md).
	ReservedNames []string
	// StorageBackend is "bolt" (default), "etcd" or "memory".
	StorageBackend string
	// Etcd configures the etcd backend: several server replicas sharing
	// one etcd cluster (and the same CA and token key files).
	Etcd       EtcdConfig
	AgentTTL   time.Duration
	Retention  time.Duration
	CertTTL    time.Duration
	RenewGrace time.Duration
	// FlushInterval is how often heartbeats are written to the store; zero
	// takes the backend's default (DefaultFlushInterval, DefaultEtcdFlushInterval).
	FlushInterval time.Duration
	SDFilePath    string
	AnonymousSD   bool
	// Reload asks for the reloadable configuration to be re-read (SIGHUP).
	Reload <-chan os.Signal
	Logger *slog.Logger
}

// Default flush intervals, each capped at a quarter of the agent TTL. With
// etcd every flush rewrites up to 256 last-seen blobs per replica (about
// 900 KB with 100,000 agents), and etcd keeps every version until it
// compacts: every 5 s that would be about 640 MB of history an hour per
// replica, against etcd's default 2 GiB quota; every 30 s it is about
// 110 MB.
const (
	DefaultFlushInterval     = 5 * time.Second
	DefaultEtcdFlushInterval = 30 * time.Second
)

// EtcdConfig is the etcd backend's connection settings.
type EtcdConfig struct {
	Endpoints []string
	Prefix    string
	// ReplicaID names this replica (default: the hostname).
	ReplicaID    string
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
	if err := checkConfig(&cfg); err != nil {
		return err
	}
	logger := cfg.Logger
	// Read every input and bind first: a server that cannot start must
	// fail before it creates a CA, a token key or a registry nobody asked
	// for, and leave the data directory as it found it.
	if _, err := loadWebConfig(cfg); err != nil {
		return err
	}
	var etcdOpts etcd.Options
	if cfg.StorageBackend == "etcd" {
		var err error
		if etcdOpts, err = etcdOptions(cfg.Etcd, logger); err != nil {
			return err
		}
	}
	if err := checkPaths(cfg); err != nil {
		return err
	}
	listeners, err := web.Listen(cfg.Web)
	if err != nil {
		return err
	}
	defer web.CloseAll(listeners)
	st, err := openStore(ctx, cfg, etcdOpts)
	if err != nil {
		return err
	}
	defer st.Close()
	// Only now: a store that cannot be opened leaves nothing behind.
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return fmt.Errorf("--data.dir: %w", err)
	}
	var shared identityStore
	if s, ok := st.(identityStore); ok {
		shared = s
	}
	authority, key, err := loadCredentials(ctx, cfg.DataDir, shared, logger)
	if err != nil {
		return err
	}
	webFlags, autoCert, err := prepareWebConfig(cfg, authority)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(
		versioncollector.NewCollector("baremetal_sd"),
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	metrics := collector.NewServer(reg)
	collector.RegisterCertificateExpiry(reg, certificateExpiries(authority, *webFlags.WebConfigFile))
	if s, ok := st.(*etcd.Store); ok {
		reg.MustRegister(etcd.NewCollector(s))
	}

	fleet := registry.New(registry.Config{
		Store:         st,
		TTL:           cfg.AgentTTL,
		Retention:     cfg.Retention,
		FlushInterval: cfg.FlushInterval,
		// Revoked records must outlive every certificate and the renewal grace
		// window, or a revoked host could come back by renewing.
		RevocationRetention: cfg.CertTTL + cfg.RenewGrace + 24*time.Hour,
		RenewGrace:          cfg.RenewGrace,
		Metrics:             metrics,
		Logger:              logger,
	})
	if err := fleet.Load(ctx); err != nil {
		return err
	}
	reg.MustRegister(registry.NewExporterHealthCollector(fleet))
	// Loading decoded every record once. Hand that garbage back to the
	// kernel now rather than have it count as resident memory until the
	// scavenger gets to it: with 100,000 agents it is more than the
	// registry itself.
	debug.FreeOSMemory()
	// A shared store reports what other replicas change; the registry
	// applies it so every replica serves the same http_sd.
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	if events := st.Watch(watchCtx); events != nil {
		go func() {
			for ev := range events {
				fleet.ApplyEvent(ev)
			}
		}()
	}
	cache := httpsd.NewCache(fleet, metrics)
	consumers := httpsd.NewConsumerLog(metrics, time.Now)
	api := api.New(api.Config{
		Consumers:   consumers,
		Registry:    fleet,
		Cache:       cache,
		Store:       st,
		CA:          authority,
		Tokens:      ca.NewTokens(key),
		CertTTL:     cfg.CertTTL,
		RenewGrace:  cfg.RenewGrace,
		AnonymousSD: cfg.AnonymousSD,
		Metrics:     metrics,
		Logger:      logger,
		// Loopback names stay free: only a process on the Prometheus host
		// could answer for them, and agents on test and single-host setups
		// register them.
		ReservedNames: reservedNames(cfg.ReservedNames),
	})

	tunnels := tunnel.NewServer(tunnel.ServerConfig{
		Authority: authority,
		Directory: tunnelDirectory{fleet},
		Metrics:   tunnel.NewServerMetrics(reg),
		Logger:    logger,
	})

	mux := http.NewServeMux()
	api.Routes(mux)
	mux.HandleFunc("GET "+tunnel.Path, tunnels.ServeTunnel)
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
		if !fleet.Ready() {
			http.Error(w, "Registry not loaded.", http.StatusServiceUnavailable)
			return
		}
		if h, ok := st.(store.HealthChecker); ok {
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
	showFleet := fleetReader(api.CanReadFleet)
	sdReadable := api.CanReadFleet
	if cfg.AnonymousSD {
		showFleet = func(*http.Request) bool { return true }
		sdReadable = showFleet
	}
	mux.Handle("/", &statusPage{registry: fleet, now: time.Now, logger: logger, showFleet: showFleet, sdReadable: sdReadable, consumers: consumers})

	runCtx, stopLoops := context.WithCancel(context.Background())
	var loops sync.WaitGroup
	loops.Go(func() { fleet.Run(runCtx) })
	loops.Go(func() { tunnels.Run(runCtx) })
	if cfg.SDFilePath != "" {
		fw := &httpsd.FileSDWriter{Path: cfg.SDFilePath, Cache: cache, Registry: fleet, Metrics: metrics, Logger: logger}
		loops.Go(func() { fw.Run(runCtx) })
	}
	if autoCert != nil {
		loops.Go(func() { autoCert.run(runCtx, servingCertCheckInterval) })
	}

	srv := &http.Server{
		Handler:           tunnels.Wrap(mux),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelDebug),
	}
	rl := newReloads(*webFlags.WebConfigFile, reg, logger)
	serveErr := make(chan error, 1)
	// basic_auth_users in the web config guard the status page only:
	// agents and Prometheus authenticate with certificates and tokens.
	// CONNECT goes to the tunnels' proxy, which authenticates itself.
	statusOnly := web.WithBasicAuthScope(func(r *http.Request) bool { return r.Method != http.MethodConnect && r.URL.Path == "/" })
	// After a restart every agent reconnects at once, most with a tunnel:
	// bounded, the handshakes finish one after another instead of all
	// timing out together.
	handshakes := web.WithHandshakeLimit(handshakesPerCPU * runtime.GOMAXPROCS(0))
	go func() { serveErr <- web.ServeListeners(listeners, srv, webFlags, logger, statusOnly, handshakes) }()
	loops.Go(func() { rl.watch(runCtx, cfg.Reload) })

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
	loops.Wait()
	return err
}

func openStore(ctx context.Context, cfg Config, etcdOpts etcd.Options) (store.Store, error) {
	switch cfg.StorageBackend {
	case "etcd":
		s, err := etcd.Open(ctx, etcdOpts)
		if err != nil {
			return nil, fmt.Errorf("open etcd registry: %w", err)
		}
		return s, nil
	case "", "bolt":
		if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
			return nil, fmt.Errorf("--data.dir: %w", err)
		}
		s, err := bolt.Open(filepath.Join(cfg.DataDir, RegistryFile), bolt.Options{Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("open registry: %w", err)
		}
		return s, nil
	case "memory":
		cfg.Logger.Warn("Using the in-memory store: registrations are lost on restart")
		return memory.New(), nil
	}
	return nil, fmt.Errorf("unknown storage backend %q", cfg.StorageBackend)
}

// checkConfig fills in defaults that depend on other settings and refuses
// combinations that cannot work, before anything is created or opened.
func checkConfig(cfg *Config) error {
	if cfg.AgentTTL <= 0 {
		return fmt.Errorf("--agent.ttl must be positive, not %s", cfg.AgentTTL)
	}
	// The names an operator gave go into the serving certificate; the
	// default hostname is the system's business.
	for _, n := range cfg.ReservedNames {
		if net.ParseIP(n) != nil {
			continue
		}
		if err := protocol.ValidateHostname(strings.TrimPrefix(n, "*.")); err != nil {
			return fmt.Errorf("--tls.server-name: %w", err)
		}
	}
	// Heartbeats reach the store, and other replicas, one flush late: that
	// must stay well within the TTL or agents expire although they
	// heartbeat.
	limit := cfg.AgentTTL / 4
	switch {
	case cfg.FlushInterval < 0:
		return fmt.Errorf("--registry.flush-interval must be positive, not %s", cfg.FlushInterval)
	case cfg.FlushInterval > limit:
		return fmt.Errorf("--registry.flush-interval=%s must be at most a quarter of --agent.ttl=%s (%s): heartbeats reach the store, and the other replicas, one flush late", cfg.FlushInterval, cfg.AgentTTL, limit)
	case cfg.FlushInterval == 0 && cfg.StorageBackend == "etcd":
		cfg.FlushInterval = min(DefaultEtcdFlushInterval, limit)
	case cfg.FlushInterval == 0:
		cfg.FlushInterval = min(DefaultFlushInterval, limit)
	}
	if cfg.StorageBackend != "etcd" {
		e := cfg.Etcd
		if len(e.Endpoints) > 0 || e.CAFile != "" || e.CertFile != "" || e.KeyFile != "" || e.Username != "" || e.PasswordFile != "" || e.ReplicaID != "" {
			return errors.New("--etcd.* flags are given but --storage.backend is not etcd")
		}
		return nil
	}
	return checkEtcdConfig(&cfg.Etcd)
}

// checkEtcdConfig normalizes the endpoints and checks that the TLS, auth
// and replica settings fit together.
func checkEtcdConfig(e *EtcdConfig) error {
	// Repeated flags and comma-separated lists (etcdctl's style) both work.
	var endpoints []string
	schemes := map[string]bool{}
	for _, v := range e.Endpoints {
		for _, ep := range strings.Split(v, ",") {
			if ep = strings.TrimSpace(ep); ep == "" {
				continue
			}
			scheme, _, ok := strings.Cut(ep, "://")
			if !ok || (scheme != "http" && scheme != "https") {
				return fmt.Errorf("--etcd.endpoints: %q is not an http:// or https:// URL", ep)
			}
			schemes[scheme] = true
			endpoints = append(endpoints, ep)
		}
	}
	e.Endpoints = endpoints
	switch {
	case len(e.Endpoints) == 0:
		return errors.New("--storage.backend=etcd needs --etcd.endpoints")
	case len(schemes) > 1:
		return errors.New("--etcd.endpoints mixes http:// and https://: one TLS setting applies to all of them")
	case (e.KeyFile != "") != (e.CertFile != ""):
		return errors.New("--etcd.cert-file and --etcd.key-file go together: the client certificate needs its key and the other way round")
	case (e.CAFile != "" || e.CertFile != "") && schemes["http"]:
		return errors.New("--etcd.ca-file and --etcd.cert-file need https:// endpoints")
	case (e.Username != "") != (e.PasswordFile != ""):
		return errors.New("--etcd.username and --etcd.password-file go together")
	}
	if e.ReplicaID == "" {
		id, err := etcd.DefaultReplicaID()
		if err != nil {
			return fmt.Errorf("%w: set --etcd.replica-id", err)
		}
		e.ReplicaID = id
	}
	if err := etcd.ValidateReplicaID(e.ReplicaID); err != nil {
		return fmt.Errorf("--etcd.replica-id: %w", err)
	}
	return nil
}

// etcdOptions turns checked flags into store options, reading the files
// they name.
func etcdOptions(e EtcdConfig, logger *slog.Logger) (etcd.Options, error) {
	opts := etcd.Options{
		Endpoints:      e.Endpoints,
		Prefix:         e.Prefix,
		ReplicaID:      e.ReplicaID,
		RequestTimeout: e.Timeout,
		Username:       e.Username,
		Logger:         logger,
	}
	for _, f := range []struct{ flag, path string }{{"--etcd.ca-file", e.CAFile}, {"--etcd.cert-file", e.CertFile}, {"--etcd.key-file", e.KeyFile}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return opts, fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	if strings.HasPrefix(e.Endpoints[0], "https://") {
		// Without --etcd.ca-file the system roots verify etcd.
		tlsCfg, err := promconfig.NewTLSConfig(&promconfig.TLSConfig{CAFile: e.CAFile, CertFile: e.CertFile, KeyFile: e.KeyFile})
		if err != nil {
			return opts, fmt.Errorf("--etcd.ca-file, --etcd.cert-file or --etcd.key-file: %w", err)
		}
		opts.TLS = tlsCfg
	}
	if e.PasswordFile != "" {
		pw, err := os.ReadFile(e.PasswordFile)
		if err != nil {
			return opts, fmt.Errorf("--etcd.password-file: %w", err)
		}
		if opts.Password = strings.TrimSpace(string(pw)); opts.Password == "" {
			return opts, fmt.Errorf("--etcd.password-file: %s is empty", e.PasswordFile)
		}
	}
	return opts, nil
}

// prepareWebConfig returns the web flags to serve with. Without an operator
// web config it writes one that serves the auto-created certificate and
// verifies client certificates from our CA when they are given, and returns
// that certificate to keep fresh; with one, it checks that TLS is on,
// because the server never speaks plain HTTP.
func prepareWebConfig(cfg Config, authority *ca.Authority) (*toolkitweb.FlagConfig, *servingCert, error) {
	flags := *cfg.Web
	c, err := loadWebConfig(cfg)
	if err != nil {
		return nil, nil, err
	}
	if c != nil {
		if c.TLSConfig.ClientAuth != "VerifyClientCertIfGiven" && c.TLSConfig.ClientAuth != "RequireAndVerifyClientCert" {
			cfg.Logger.Warn("Web config does not verify client certificates: agents cannot heartbeat or renew, and Prometheus needs a token", "client_auth_type", c.TLSConfig.ClientAuth)
		} else if !trustsIssuers(c.TLSConfig.ClientCAs, authority) {
			cfg.Logger.Warn("Web config's client_ca_file lacks the agent or client CA: agents and Prometheus with certificates of this version are refused; point it at the data directory's "+ca.ClientCAsFile, "client_ca_file", c.TLSConfig.ClientCAs)
		}
		return &flags, nil, nil
	}
	auto := &servingCert{authority: authority, dir: cfg.DataDir, names: cfg.ServerNames, ttl: servingCertTTL, logger: cfg.Logger}
	if err := auto.ensure(); err != nil {
		return nil, nil, err
	}
	path := filepath.Join(cfg.DataDir, WebConfigFile)
	content := strings.Join([]string{
		"# Written by baremetal_sd server because no --web.config.file was given.",
		"# Pass your own web config to change it; this file is rewritten on start.",
		"tls_server_config:",
		"  cert_file: server.crt",
		"  key_file: server.key",
		"  client_auth_type: VerifyClientCertIfGiven",
		"  client_ca_file: " + ca.ClientCAsFile,
		"",
	}, "\n")
	if old, err := os.ReadFile(path); err != nil || string(old) != content {
		if err := fileutil.WriteAtomic(path, []byte(content), 0o600); err != nil {
			return nil, nil, fmt.Errorf("write web config: %w", err)
		}
	}
	flags.WebConfigFile = &path
	return &flags, auto, nil
}

// loadWebConfig loads and checks the operator's web config and the TLS
// files it names; nil without one. The data directory's client CA bundle
// may be missing: the server writes it at every start, before it serves.
func loadWebConfig(cfg Config) (*toolkitweb.Config, error) {
	if cfg.Web.WebConfigFile == nil || *cfg.Web.WebConfigFile == "" {
		return nil, nil
	}
	path := *cfg.Web.WebConfigFile
	c, err := web.LoadConfig(path)
	if err != nil {
		return nil, fmt.Errorf("--web.config.file: %w", err)
	}
	if c.TLSConfig.TLSCertPath == "" && c.TLSConfig.TLSCert == "" {
		return nil, fmt.Errorf("--web.config.file: web config %s has no tls_server_config: the server serves TLS only", path)
	}
	bundle := absPath(filepath.Join(cfg.DataDir, ca.ClientCAsFile))
	err = web.CheckTLSFiles(path, c.TLSConfig, func(file string) bool { return absPath(file) == bundle })
	if errors.Is(err, fs.ErrNotExist) && strings.HasPrefix(absPath(c.TLSConfig.TLSCertPath), absPath(cfg.DataDir)+string(filepath.Separator)) {
		// The documented web config names the certificate the server
		// creates, which it does only without a web config.
		return nil, fmt.Errorf("--web.config.file: %w; the server creates %s and %s in --data.dir only when no operator file is given: start it once without this flag", err, ca.ServerCertFile, ca.ServerKeyFile)
	}
	if err != nil {
		return nil, fmt.Errorf("--web.config.file: %w", err)
	}
	return c, nil
}

// absPath is path made absolute, for comparing paths; path itself when
// that fails, which only a missing working directory makes it do.
func absPath(path string) string {
	if abs, err := filepath.Abs(path); err == nil {
		return abs
	}
	return path
}

// checkPaths refuses directories the server would fail to create or write
// in, before it creates anything.
func checkPaths(cfg Config) error {
	if err := fileutil.CheckDir(cfg.DataDir); err != nil {
		return fmt.Errorf("--data.dir: %w", err)
	}
	if cfg.SDFilePath != "" {
		// The file is replaced by renaming a new one over it, in a
		// directory that must exist.
		dir := filepath.Dir(cfg.SDFilePath)
		if _, err := os.Stat(dir); err != nil {
			return fmt.Errorf("--sd.file.path: %w", err)
		}
		if err := fileutil.CheckDir(dir); err != nil {
			return fmt.Errorf("--sd.file.path: %w", err)
		}
	}
	return nil
}

// trustsIssuers reports whether the CA file at path holds both issuing
// CAs, as an operator's web config must after the upgrade from 0.1.0.
func trustsIssuers(path string, authority *ca.Authority) bool {
	data, err := os.ReadFile(path)
	if err != nil {
		return false
	}
	return bytes.Contains(data, authority.AgentCACertificatePEM()) && bytes.Contains(data, authority.ClientCACertificatePEM())
}
