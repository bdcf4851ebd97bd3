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

package web

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	toolkitweb "github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/sync/errgroup"

	"github.com/baremetal-sd/baremetal_sd/internal/yamlerr"
)

// allowedHeaders are the response headers a web config may set, with their
// permitted values (nil: any value). The list is the toolkit's, so a file
// valid for node_exporter is valid here and vice versa.
func allowedHeaders() map[string][]string {
	return map[string][]string{
		"Strict-Transport-Security": nil,
		"X-Content-Type-Options":    {"nosniff"},
		"X-Frame-Options":           {"deny", "sameorigin"},
		"X-XSS-Protection":          nil,
		"Content-Security-Policy":   nil,
	}
}

// LoadConfig parses a web config file as exporter-toolkit does: its
// defaults (TLS 1.2 to 1.3, HTTP/2 on), strict YAML, paths relative to the
// file's directory, the header allow-list and valid bcrypt hashes.
func LoadConfig(path string) (*toolkitweb.Config, error) {
	content, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read web config: %w", err)
	}
	c := &toolkitweb.Config{
		TLSConfig: toolkitweb.TLSConfig{
			MinVersion: tls.VersionTLS12,
			MaxVersion: tls.VersionTLS13,
		},
		HTTPConfig: toolkitweb.HTTPConfig{HTTP2: true},
	}
	if err := yamlerr.UnmarshalStrict(content, c); err != nil {
		return nil, fmt.Errorf("web config %s: %w", path, err)
	}
	allowed := allowedHeaders()
	for k, v := range c.HTTPConfig.Header {
		values, ok := allowed[k]
		if !ok {
			return nil, fmt.Errorf("web config %s: HTTP header %q can not be configured", path, k)
		}
		if len(values) > 0 && !contains(values, v) {
			return nil, fmt.Errorf("web config %s: invalid value %q for %s, expected one of %q", path, v, k, values)
		}
	}
	for user, hash := range c.Users {
		if err := checkHash(string(hash)); err != nil {
			return nil, fmt.Errorf("web config %s: user %q: %w", path, user, err)
		}
	}
	c.TLSConfig.SetDirectory(filepath.Dir(path))
	return c, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// fileStamp identifies one version of a file without reading it. A rename
// over the file (how certificates are rotated) changes the inode; an
// in-place rewrite changes the modification time or size.
type fileStamp struct {
	path  string
	mtime time.Time
	size  int64
	ino   uint64
	err   bool
}

func stamp(path string) fileStamp {
	st, err := os.Stat(path)
	if err != nil {
		return fileStamp{path: path, err: true}
	}
	s := fileStamp{path: path, mtime: st.ModTime(), size: st.Size()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		s.ino = sys.Ino
	}
	return s
}

func stampsEqual(a, b []fileStamp) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// configCache holds the parsed web config and the TLS material it names,
// re-parsed only when one of the files changes. The toolkit parses the YAML
// on every request and reloads the certificate on every handshake; on the
// heartbeat path that parse costs more than the request itself (see
// BENCHMARKS.md).
type configCache struct {
	path   string
	logger *slog.Logger
	parses atomic.Int64 // for tests: how often the YAML was parsed
	// nextProtos is set before the first handshake and never changes: like
	// the toolkit, HTTP/2 is decided by the config at start.
	nextProtos []string

	mu        sync.Mutex
	cfgStamp  fileStamp
	cfg       *toolkitweb.Config
	badStamp  fileStamp // the broken version last logged
	tlsStamps []fileStamp
	tlsCfg    *tls.Config
}

func newConfigCache(path string, logger *slog.Logger) *configCache {
	return &configCache{path: path, logger: logger}
}

// config returns the current config. When the file turns invalid after a
// good load, the last good config stays in force and the error is logged
// once per version of the broken file: the toolkit would answer 500 to every
// request instead, and an operator's typo should not take discovery down.
func (c *configCache) config() (*toolkitweb.Config, error) {
	s := stamp(c.path)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg != nil && s == c.cfgStamp {
		return c.cfg, nil
	}
	if c.cfg != nil && s == c.badStamp {
		return c.cfg, nil
	}
	c.parses.Add(1)
	cfg, err := LoadConfig(c.path)
	if err != nil {
		if c.cfg == nil {
			return nil, err
		}
		c.badStamp = s
		c.logger.Error("Web config is invalid, keeping the previous one", "path", c.path, "err", err)
		return c.cfg, nil
	}
	c.cfg, c.cfgStamp = cfg, s
	return cfg, nil
}

// tlsConfig returns the TLS config for the next handshake, rebuilt when the
// web config or any file it references changed.
func (c *configCache) tlsConfig() (*tls.Config, error) {
	cfg, err := c.config()
	if err != nil {
		return nil, err
	}
	t := &cfg.TLSConfig
	stamps := []fileStamp{stamp(c.path)}
	for _, p := range []string{t.TLSCertPath, t.TLSKeyPath, t.ClientCAs} {
		if p != "" {
			stamps = append(stamps, stamp(p))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tlsCfg != nil && stampsEqual(stamps, c.tlsStamps) {
		return c.tlsCfg, nil
	}
	tc, err := toolkitweb.ConfigToTLSConfig(t)
	if err != nil {
		if c.tlsCfg != nil {
			c.tlsStamps = stamps // log once per change
			c.logger.Error("TLS files are invalid, keeping the previous certificate", "path", c.path, "err", err)
			return c.tlsCfg, nil
		}
		return nil, err
	}
	// ConfigToTLSConfig reloads the key pair on every handshake; load it
	// once for this version of the files instead.
	cert, err := tc.GetCertificate(nil)
	if err != nil {
		return nil, err
	}
	tc.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return cert, nil }
	tc.NextProtos = c.nextProtos
	c.tlsCfg, c.tlsStamps = tc, stamps
	return tc, nil
}

// ListenAndServe has the contract of exporter-toolkit's ListenAndServe:
// the listen addresses or systemd sockets of flags, and TLS and basic auth
// from the web config file, which is re-read when it or a file it names
// changes.
func ListenAndServe(server *http.Server, flags *toolkitweb.FlagConfig, logger *slog.Logger, opts ...ServeOption) error {
	if flags == nil || flags.WebConfigFile == nil {
		return toolkitweb.ErrMissingFlag
	}
	if flags.WebSystemdSocket != nil && *flags.WebSystemdSocket {
		logger.Info("Listening on systemd activated listeners instead of port listeners")
		listeners, err := activation.Listeners()
		if err != nil {
			return fmt.Errorf("systemd socket activation: %w", err)
		}
		if len(listeners) == 0 {
			return errors.New("no socket activation file descriptors found")
		}
		return serveAll(listeners, server, flags, logger, opts...)
	}
	listeners, err := Listen(flags)
	if err != nil {
		return err
	}
	return serveAll(listeners, server, flags, logger, opts...)
}

func serveAll(listeners []net.Listener, server *http.Server, flags *toolkitweb.FlagConfig, logger *slog.Logger, opts ...ServeOption) error {
	if len(listeners) == 1 {
		return Serve(listeners[0], server, flags, logger, opts...)
	}
	var g errgroup.Group
	for _, l := range listeners {
		g.Go(func() error { return Serve(l, server, flags, logger, opts...) })
	}
	return g.Wait()
}

// Serve serves on one listener with the web config of flags. It must not be
// called concurrently for the same server with different flags.
func Serve(l net.Listener, server *http.Server, flags *toolkitweb.FlagConfig, logger *slog.Logger, opts ...ServeOption) error {
	path := ""
	if flags.WebConfigFile != nil {
		path = *flags.WebConfigFile
	}
	logger.Info("Listening on", "addr", l.Addr().String())
	if path == "" {
		logger.Info("TLS is disabled", "http2", false, "addr", l.Addr().String())
		return server.Serve(l)
	}
	cache := newConfigCache(path, logger)
	cfg, err := cache.config()
	if err != nil {
		return err
	}
	wrapped := server.Handler
	if wrapped == nil {
		wrapped = http.DefaultServeMux
	}
	o := newServeOptions(opts)
	if _, ok := wrapped.(*authHandler); !ok {
		server.Handler = newAuthHandler(cache, wrapped, cfg, logger, o.protect)
	}
	if !cfg.TLSConfig.IsEnabled() {
		logger.Info("TLS is disabled", "http2", false, "addr", l.Addr().String())
		return server.Serve(l)
	}
	cache.nextProtos = []string{"http/1.1"}
	if cfg.HTTPConfig.HTTP2 {
		cache.nextProtos = []string{"h2", "http/1.1"}
	} else {
		server.TLSNextProto = make(map[string]func(*http.Server, *tls.Conn, http.Handler))
	}
	base, err := cache.tlsConfig()
	if err != nil {
		return err
	}
	server.TLSConfig = base.Clone()
	server.TLSConfig.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return cache.tlsConfig()
	}
	logger.Info("TLS is enabled", "http2", cfg.HTTPConfig.HTTP2, "addr", l.Addr().String())
	if o.handshakes > 0 {
		return server.Serve(newHandshakeListener(l, server.TLSConfig, o.handshakes, handshakeTimeout(server), logger))
	}
	return server.ServeTLS(l, "", "")
}

// CheckTLSFiles checks the files of a web config's TLS settings, read from
// path, the way serving loads them: they exist, the certificate matches its
// key, and the client CAs, client auth type and the rest are valid. A role
// calls it at start so that a wrong file stops it before it creates or
// announces anything, rather than at its first handshake. Files for which
// later returns true are created by the role itself before it serves; they
// are not read.
func CheckTLSFiles(path string, t toolkitweb.TLSConfig, later func(file string) bool) error {
	if !t.IsEnabled() {
		return nil
	}
	pending := false
	for _, f := range []struct{ key, file string }{
		{"cert_file", t.TLSCertPath}, {"key_file", t.TLSKeyPath}, {"client_ca_file", t.ClientCAs},
	} {
		if f.file == "" {
			continue
		}
		if later(f.file) {
			pending = pending || f.key != "client_ca_file"
			continue
		}
		if _, err := os.Stat(f.file); err != nil {
			return fmt.Errorf("web config %s: %s: %w", path, f.key, err)
		}
	}
	if pending {
		// The toolkit loads certificate and key together.
		return nil
	}
	if t.ClientCAs != "" && later(t.ClientCAs) {
		// Still configured, so that the client auth type is checked
		// against it; the text is no certificate, and ignored.
		t.ClientCAs, t.ClientCAsText = "", "written at start"
	}
	if _, err := toolkitweb.ConfigToTLSConfig(&t); err != nil {
		return fmt.Errorf("web config %s: %w", path, err)
	}
	return nil
}
