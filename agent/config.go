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
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	toolkitweb "github.com/prometheus/exporter-toolkit/web"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// Defaults of the tunables in Config.
const (
	DefaultBackoffBase     = time.Second
	DefaultBackoffMax      = 5 * time.Minute
	DefaultRequestTimeout  = 30 * time.Second
	DefaultShutdownTimeout = 30 * time.Second
)

// Config is everything the agent role needs; main fills it from flags.
type Config struct {
	// DiscoveryURLs are the base URLs of the discovery server replicas; the
	// agent fails over between them.
	DiscoveryURLs []string
	// TokenFile holds the enrollment token. It is read whenever the agent
	// needs to enroll, so an operator can drop a new token in at any time.
	TokenFile string
	// CAFile verifies the discovery servers; empty means the system roots.
	CAFile string
	// StateDir holds the key, the certificate and the agent's state.
	StateDir string
	// Web holds the listen addresses and the optional web config file.
	// Without a web config the agent writes one into StateDir that serves its
	// own certificate and requires client certificates from the CA.
	Web *toolkitweb.FlagConfig
	// RelayConfigFile lists the exporters to relay; empty relays none.
	RelayConfigFile string
	// Hostname is registered and certified; os.Hostname when empty.
	Hostname string
	// Address is where Prometheus scrapes the agent; empty lets the server
	// use the address the agent's requests come from.
	Address string
	// Port is the registered port; when zero it is taken from the first
	// listen address.
	Port int
	// Labels become __meta_baremetal_sd_label_<key> in http_sd.
	Labels map[string]string
	// Reload asks for the configuration to be re-read (SIGHUP); nil when
	// only /-/reload may.
	Reload <-chan os.Signal
	// EnableLifecycle serves POST /-/reload.
	EnableLifecycle bool
	// DeregisterOnShutdown removes the agent from discovery when it stops.
	DeregisterOnShutdown bool
	// MemoryLimit is the agent's soft memory limit (debug.SetMemoryLimit)
	// in bytes, before the relay's series caches, which are added to it;
	// 0 leaves the runtime's limit (GOMEMLIMIT) alone.
	MemoryLimit int64
	// Tunnel is "on" for a host Prometheus cannot reach: the agent keeps a
	// tunnel to every discovery server and registers to be scraped through
	// them (docs/tunnels.md). "off" or empty scrapes it directly.
	Tunnel string
	Logger *slog.Logger

	// BackoffBase and BackoffMax bound the exponential backoff (with full
	// jitter) between failed attempts.
	BackoffBase time.Duration
	BackoffMax  time.Duration
	// RequestTimeout bounds one request to one discovery server.
	RequestTimeout time.Duration
	// ShutdownTimeout bounds draining in-flight scrapes and deregistering.
	ShutdownTimeout time.Duration
}

// normalize fills defaults and validates what can be checked before any
// file or network access.
func (c Config) normalize() (Config, error) {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if len(c.DiscoveryURLs) == 0 {
		return c, errors.New("no --discovery.url given")
	}
	if c.StateDir == "" {
		return c, errors.New("no --agent.state-dir given")
	}
	if c.Web == nil || c.Web.WebConfigFile == nil {
		return c, errors.New("web flags missing")
	}
	if c.Hostname == "" {
		h, err := os.Hostname()
		if err != nil {
			return c, fmt.Errorf("hostname: %w (set --agent.hostname)", err)
		}
		c.Hostname = h
	}
	if err := protocol.ValidateHostname(c.Hostname); err != nil {
		return c, fmt.Errorf("%w (set --agent.hostname)", err)
	}
	if c.Address != "" {
		if err := protocol.ValidateAddress(c.Address); err != nil {
			return c, fmt.Errorf("--agent.address: %w", err)
		}
	}
	if err := protocol.ValidateLabels(c.Labels); err != nil {
		return c, fmt.Errorf("--agent.label: %w", err)
	}
	if c.Port == 0 {
		p, err := listenPort(c.Web)
		if err != nil {
			return c, err
		}
		c.Port = p
	}
	if c.Port < 1 || c.Port > 65535 {
		return c, fmt.Errorf("port %d is out of range 1-65535", c.Port)
	}
	switch c.Tunnel {
	case "":
		c.Tunnel = TunnelOff
	case TunnelOff, TunnelOn:
	default:
		return c, fmt.Errorf("--tunnel=%q: use on or off", c.Tunnel)
	}
	c.normalizeTunables()
	return c, nil
}

// Values of Config.Tunnel.
const (
	TunnelOff = "off"
	TunnelOn  = "on"
)

// localAddress is where the agent's tunnel hands streams to its own TLS
// listener: the first listen address, on loopback when it listens on all
// addresses.
func localAddress(w *toolkitweb.FlagConfig) (string, error) {
	if w.WebListenAddresses == nil || len(*w.WebListenAddresses) == 0 {
		return "", errors.New("no --web.listen-address for the tunnel to reach")
	}
	addr := (*w.WebListenAddresses)[0]
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--tunnel needs a TCP --web.listen-address, not %q: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port), nil
}

// normalizeTunables fills the defaults of the timing knobs.
func (c *Config) normalizeTunables() {
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.BackoffBase <= 0 {
		c.BackoffBase = DefaultBackoffBase
	}
	if c.BackoffMax <= 0 {
		c.BackoffMax = DefaultBackoffMax
	}
	if c.BackoffMax < c.BackoffBase {
		c.BackoffMax = c.BackoffBase
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = DefaultRequestTimeout
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
}

// listenPort is the port of the first listen address, the one the agent
// registers.
func listenPort(w *toolkitweb.FlagConfig) (int, error) {
	if w.WebListenAddresses == nil || len(*w.WebListenAddresses) == 0 {
		return 0, errors.New("no --web.listen-address to take the registered port from")
	}
	addr := (*w.WebListenAddresses)[0]
	_, port, err := net.SplitHostPort(strings.TrimPrefix(addr, "vsock://"))
	if err != nil {
		return 0, fmt.Errorf("--web.listen-address %q: %w", addr, err)
	}
	p, err := strconv.Atoi(port)
	if err != nil || p < 1 || p > 65535 {
		return 0, fmt.Errorf("--web.listen-address %q: the agent needs a fixed port to register", addr)
	}
	return p, nil
}

// maxCAFile bounds the CA bundle read from --discovery.ca-file.
const maxCAFile = 1 << 20

// loadRootCAs reads the CA bundle that verifies the discovery servers: the
// pool, and its certificates, which the agent pins (see checkReplyCAs).
func loadRootCAs(path string) (*x509.CertPool, []*x509.Certificate, error) {
	if path == "" {
		return nil, nil, nil // system roots
	}
	data, err := readBounded(path, maxCAFile)
	if err != nil {
		return nil, nil, fmt.Errorf("--discovery.ca-file: %w", err)
	}
	certs, err := parseChain(data)
	if err != nil {
		return nil, nil, fmt.Errorf("--discovery.ca-file %s: %w", path, err)
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, certs, nil
}
