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
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	toolkitweb "github.com/prometheus/exporter-toolkit/web"
	"golang.org/x/crypto/bcrypt"

	"github.com/baremetal-sd/baremetal_sd/internal/testca"
)

// testPKI is a CA with helpers to write server and client certificates.
type testPKI struct {
	t    testing.TB
	dir  string
	ca   *testca.CA
	pool *x509.CertPool
}

func newPKI(t testing.TB) *testPKI {
	t.Helper()
	ca := testca.New(t, "test CA")
	p := &testPKI{t: t, dir: t.TempDir(), ca: ca, pool: ca.Pool()}
	p.write("ca.crt", ca.PEM())
	return p
}

func (p *testPKI) write(name string, data []byte) {
	p.t.Helper()
	// Write and rename, as certificate rotation does.
	tmp := filepath.Join(p.dir, "."+name+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		p.t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(p.dir, name)); err != nil {
		p.t.Fatal(err)
	}
}

// issue writes NAME.crt and NAME.key: a serving certificate for
// 127.0.0.1, or a client certificate.
func (p *testPKI) issue(name string, serial int64, server bool) {
	p.t.Helper()
	l := testca.Leaf{CommonName: name, Serial: serial, Usage: testca.ClientAuth}
	if server {
		l.Usage, l.IPAddresses = testca.ServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	c := p.ca.Issue(p.t, l)
	p.write(name+".key", c.KeyPEM(p.t))
	p.write(name+".crt", c.PEM())
}

func (p *testPKI) clientCert(name string) tls.Certificate {
	p.issue(name, 99, false)
	c, err := tls.LoadX509KeyPair(filepath.Join(p.dir, name+".crt"), filepath.Join(p.dir, name+".key"))
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

// serve starts Serve on a loopback listener and returns its URL and cache.
func serve(t testing.TB, configPath string, h http.Handler, opts ...ServeOption) (string, *http.Server) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	flags := &toolkitweb.FlagConfig{WebConfigFile: &configPath}
	done := make(chan error, 1)
	go func() { done <- Serve(l, srv, flags, slog.New(slog.DiscardHandler), opts...) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	scheme := "https"
	if configPath == "" {
		scheme = "http"
	}
	return scheme + "://" + l.Addr().String(), srv
}

func client(pool *x509.CertPool, cert *tls.Certificate) *http.Client {
	cfg := &tls.Config{RootCAs: pool}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	// New connection per request: every request is a new handshake. The
	// timeout only stops a hung test: an unknown basic auth user is checked
	// against a cost-10 bcrypt hash, which takes seconds under the race
	// detector on a loaded machine.
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, DisableKeepAlives: true}}
}

func hello() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hello") })
}

func writeConfig(t testing.TB, dir, body string) string {
	t.Helper()
	path := filepath.Join(dir, "web-config.yml")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	return path
}

const tlsConfig = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"

func TestServe_ClientAuth(t *testing.T) {
	p := newPKI(t)
	p.issue("server", 1, true)
	cert := p.clientCert("client")
	tests := []struct {
		authType string
		withCert bool
		ok       bool
	}{
		{"RequireAndVerifyClientCert", true, true},
		{"RequireAndVerifyClientCert", false, false},
		{"VerifyClientCertIfGiven", false, true},
		{"VerifyClientCertIfGiven", true, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/cert=%v", tt.authType, tt.withCert), func(t *testing.T) {
			path := writeConfig(t, p.dir, tlsConfig+"  client_auth_type: "+tt.authType+"\n  client_ca_file: ca.crt\n")
			url, _ := serve(t, path, hello())
			var c *tls.Certificate
			if tt.withCert {
				c = &cert
			}
			resp, err := client(p.pool, c).Get(url)
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != 200 {
					t.Fatalf("status %d", resp.StatusCode)
				}
			} else if err == nil {
				resp.Body.Close()
				t.Fatal("served a client without a certificate")
			}
		})
	}
}

func TestServe_BasicAuthAndHeaders(t *testing.T) {
	p := newPKI(t)
	p.issue("server", 1, true)
	hash, _ := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	path := writeConfig(t, p.dir, tlsConfig+"basic_auth_users:\n  alice: "+string(hash)+"\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n")
	url, _ := serve(t, path, hello())
	tests := []struct {
		user, pass string
		status     int
	}{
		{"alice", "secret", 200},
		{"alice", "wrong", 401},
		{"mallory", "secret", 401},
		{"", "", 401},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest("GET", url, nil)
		if tt.user != "" {
			req.SetBasicAuth(tt.user, tt.pass)
		}
		resp, err := client(p.pool, nil).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("%s/%s: status %d, want %d", tt.user, tt.pass, resp.StatusCode, tt.status)
		}
		if tt.status == 401 && resp.Header.Get("WWW-Authenticate") != "Basic" {
			t.Errorf("%s: 401 without WWW-Authenticate", tt.user)
		}
		if resp.Header.Get("X-Frame-Options") != "deny" {
			t.Errorf("configured header missing")
		}
	}
	// A user added to the file works on the next request, without restart.
	hash2, _ := bcrypt.GenerateFromPassword([]byte("pw2"), bcrypt.MinCost)
	writeConfig(t, p.dir, tlsConfig+"basic_auth_users:\n  alice: "+string(hash)+"\n  bob: "+string(hash2)+"\n")
	req, _ := http.NewRequest("GET", url, nil)
	req.SetBasicAuth("bob", "pw2")
	resp, err := client(p.pool, nil).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("new user: status %d", resp.StatusCode)
	}
}

// TestServe_BasicAuthScope: with WithBasicAuthScope, basic auth guards
// only the requests it selects; the others pass, Authorization header and
// all (a bearer token is not mistaken for failed basic auth).
func TestServe_BasicAuthScope(t *testing.T) {
	p := newPKI(t)
	p.issue("server", 1, true)
	hash, _ := bcrypt.GenerateFromPassword([]byte("secret"), bcrypt.MinCost)
	path := writeConfig(t, p.dir, tlsConfig+"basic_auth_users:\n  alice: "+string(hash)+"\n")
	// The handler says whom BasicAuthUser reports.
	whoami := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if user, ok := BasicAuthUser(r); ok {
			w.Header().Set("X-User", user)
		}
	})
	url, _ := serve(t, path, whoami, WithBasicAuthScope(func(r *http.Request) bool { return r.URL.Path == "/" }))
	tests := []struct {
		path, user, pass, bearer string
		status                   int
		authenticated            string
	}{
		{"/", "", "", "", 401, ""},
		{"/", "alice", "wrong", "", 401, ""},
		{"/", "alice", "secret", "", 200, "alice"},
		{"/", "", "", "a-token", 401, ""},
		{"/api/v1/register", "", "", "", 200, ""},
		{"/api/v1/register", "", "", "a-token", 200, ""},
		// Unprotected paths do not check basic auth, so they never report it.
		{"/metrics", "alice", "secret", "", 200, ""},
	}
	for _, tt := range tests {
		req, _ := http.NewRequest("GET", url+tt.path, nil)
		if tt.user != "" {
			req.SetBasicAuth(tt.user, tt.pass)
		}
		if tt.bearer != "" {
			req.Header.Set("Authorization", "Bearer "+tt.bearer)
		}
		resp, err := client(p.pool, nil).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.status {
			t.Errorf("%s user %q bearer %q: status %d, want %d", tt.path, tt.user, tt.bearer, resp.StatusCode, tt.status)
		}
		if got := resp.Header.Get("X-User"); got != tt.authenticated {
			t.Errorf("%s user %q: BasicAuthUser %q, want %q", tt.path, tt.user, got, tt.authenticated)
		}
		if tt.status == 401 && resp.Header.Get("WWW-Authenticate") != "Basic" {
			t.Errorf("%s: 401 without WWW-Authenticate", tt.path)
		}
	}
}

func TestServe_CertificateRotation(t *testing.T) {
	p := newPKI(t)
	p.issue("server", 1, true)
	path := writeConfig(t, p.dir, tlsConfig)
	url, _ := serve(t, path, hello())
	serial := func() int64 {
		resp, err := client(p.pool, nil).Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.TLS.PeerCertificates[0].SerialNumber.Int64()
	}
	if got := serial(); got != 1 {
		t.Fatalf("serial %d, want 1", got)
	}
	p.issue("server", 2, true)
	if got := serial(); got != 2 {
		t.Fatalf("serial %d after rotation on disk, want 2", got)
	}
}

func TestConfigCache_ParsesOnlyOnChange(t *testing.T) {
	p := newPKI(t)
	p.issue("server", 1, true)
	path := writeConfig(t, p.dir, tlsConfig)
	c := newConfigCache(path, slog.New(slog.DiscardHandler))
	for i := 0; i < 100; i++ {
		if _, err := c.config(); err != nil {
			t.Fatal(err)
		}
		if _, err := c.tlsConfig(); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.parses.Load(); n != 1 {
		t.Fatalf("%d parses of an unchanged file, want 1", n)
	}
	writeConfig(t, p.dir, tlsConfig+"  min_version: TLS13\n")
	cfg, _ := c.config()
	if n := c.parses.Load(); n != 2 || cfg.TLSConfig.MinVersion != tls.VersionTLS13 {
		t.Fatalf("after a change: %d parses, min version %v", n, cfg.TLSConfig.MinVersion)
	}
	// A broken file keeps the last good config, parsed once per version.
	writeConfig(t, p.dir, "tls_server_config: [broken\n")
	for i := 0; i < 10; i++ {
		cfg, err := c.config()
		if err != nil || cfg.TLSConfig.MinVersion != tls.VersionTLS13 {
			t.Fatalf("broken file: %v %v", cfg, err)
		}
	}
	if n := c.parses.Load(); n != 3 {
		t.Fatalf("%d parses, want 3", n)
	}
}

func TestLoadConfig_Refuses(t *testing.T) {
	dir := t.TempDir()
	for name, body := range map[string]string{
		"unknown key":    "tls_server_config:\n  nope: 1\n",
		"bad header":     "http_server_config:\n  headers:\n    Server: x\n",
		"bad header val": "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
		"plain password": "basic_auth_users:\n  alice: secret\n",
	} {
		if _, err := LoadConfig(writeConfig(t, dir, body)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := LoadConfig(filepath.Join(dir, "missing.yml")); err == nil || !strings.Contains(err.Error(), "read web config") {
		t.Errorf("missing file: %v", err)
	}
}

func TestServe_PlainWithoutConfig(t *testing.T) {
	url, _ := serve(t, "", hello())
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
}

// BenchmarkKeepAliveRequests compares, in one run, requests over keep-alive
// TLS connections served by the toolkit (which parses the web config per
// request), by this package and by a bare TLS listener.
func BenchmarkKeepAliveRequests(b *testing.B) {
	p := newPKI(b)
	p.issue("server", 1, true)
	path := writeConfig(b, p.dir, tlsConfig+"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n")
	logger := slog.New(slog.DiscardHandler)
	start := map[string]func(l net.Listener, srv *http.Server) error{
		"toolkit": func(l net.Listener, srv *http.Server) error {
			return toolkitweb.Serve(l, srv, &toolkitweb.FlagConfig{WebConfigFile: &path}, logger)
		},
		"cached": func(l net.Listener, srv *http.Server) error {
			return Serve(l, srv, &toolkitweb.FlagConfig{WebConfigFile: &path}, logger)
		},
		"bare": func(l net.Listener, srv *http.Server) error {
			return srv.ServeTLS(l, filepath.Join(p.dir, "server.crt"), filepath.Join(p.dir, "server.key"))
		},
	}
	for _, name := range []string{"toolkit", "cached", "bare"} {
		b.Run(name, func(b *testing.B) {
			l, _ := net.Listen("tcp", "127.0.0.1:0")
			srv := &http.Server{Handler: hello()}
			go func() { _ = start[name](l, srv) }()
			defer srv.Close()
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: p.pool}, MaxIdleConnsPerHost: 64}}
			url := "https://" + l.Addr().String()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					resp, err := c.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	}
}

func BenchmarkParseConfig(b *testing.B) {
	p := newPKI(b)
	p.issue("server", 1, true)
	path := writeConfig(b, p.dir, tlsConfig+"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n")
	c := newConfigCache(path, slog.New(slog.DiscardHandler))
	b.Run("parse", func(b *testing.B) {
		for b.Loop() {
			if _, err := LoadConfig(path); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cached", func(b *testing.B) {
		for b.Loop() {
			if _, err := c.config(); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func TestCheckTLSFiles_LaterFiles(t *testing.T) {
	p := newPKI(t)
	p.issue("server", 1, true)
	p.issue("other", 2, true)
	never := func(string) bool { return false }
	tests := []struct {
		name    string
		body    string
		later   func(string) bool
		wantErr string
	}{
		{name: "valid", body: tlsConfig + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n", later: never},
		{name: "certificate missing", body: "tls_server_config:\n  cert_file: nope.crt\n  key_file: server.key\n", later: never, wantErr: "cert_file: stat"},
		{name: "key of another certificate", body: "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n", later: never, wantErr: "private key does not match"},
		{name: "client CA missing", body: tlsConfig + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: nope.crt\n", later: never, wantErr: "client_ca_file: stat"},
		{name: "client CA written later", body: tlsConfig + "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: nope.crt\n",
			later: func(f string) bool { return filepath.Base(f) == "nope.crt" }},
		// Still configured while it is not there: the policy is checked.
		{name: "client CA written later without a policy", body: tlsConfig + "  client_ca_file: nope.crt\n",
			later: func(f string) bool { return filepath.Base(f) == "nope.crt" }, wantErr: "without a Client Auth Policy"},
		{name: "certificate written later", body: "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
			later: func(f string) bool { return strings.HasPrefix(filepath.Base(f), "nope.") }},
		{name: "unknown client auth type", body: tlsConfig + "  client_auth_type: Sometimes\n", later: never, wantErr: "Sometimes"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, p.dir, tt.body)
			c, err := LoadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			err = CheckTLSFiles(path, c.TLSConfig, tt.later)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("CheckTLSFiles: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path)):
				t.Fatalf("error %v, want one naming %s and saying %q", err, path, tt.wantErr)
			}
		})
	}
}
