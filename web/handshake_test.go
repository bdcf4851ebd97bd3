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
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	toolkitweb "github.com/prometheus/exporter-toolkit/web"
)

// serveLimited starts Serve with one handshake at a time and the given
// handshake timeout (the server's ReadHeaderTimeout).
func serveLimited(t *testing.T, configPath string, h http.Handler, timeout time.Duration) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: timeout}
	flags := &toolkitweb.FlagConfig{WebConfigFile: &configPath}
	done := make(chan error, 1)
	go func() { done <- Serve(l, srv, flags, slog.New(slog.DiscardHandler), WithHandshakeLimit(1)) }()
	t.Cleanup(func() {
		_ = srv.Close()
		if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
	})
	return "https://" + l.Addr().String()
}

// TestServe_HandshakeLimit: with the handshakes bounded, the server still
// verifies client certificates, hands them to handlers and speaks HTTP/2
// when the web config enables it.
func TestServe_HandshakeLimit(t *testing.T) {
	p := newPKI(t)
	p.issue("server", 1, true)
	cert := p.clientCert("client")
	whoami := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s HTTP/%d", r.TLS.PeerCertificates[0].Subject.CommonName, r.ProtoMajor)
	})
	for _, tc := range []struct {
		name, config, want string
	}{
		{"HTTP/1.1", "http_server_config:\n  http2: false\n", "client HTTP/1"},
		{"HTTP/2", "http_server_config:\n  http2: true\n", "client HTTP/2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeConfig(t, p.dir, tlsConfig+"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"+tc.config)
			url := serveLimited(t, path, whoami, 5*time.Second)
			c := client(p.pool, &cert)
			c.Transport.(*http.Transport).ForceAttemptHTTP2 = true
			resp, err := c.Get(url)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(body) != tc.want {
				t.Errorf("answered %q, want %q", body, tc.want)
			}
			if resp, err := client(p.pool, nil).Get(url); err == nil {
				resp.Body.Close()
				t.Error("served a client without a certificate")
			}
		})
	}
}

// TestServe_HandshakeLimitSilentClients: connections that never send a
// ClientHello hold no handshake slot, or a few of them would lock every
// client out for as long as the handshake timeout, again and again.
func TestServe_HandshakeLimitSilentClients(t *testing.T) {
	p := newPKI(t)
	p.issue("server", 1, true)
	url := serveLimited(t, writeConfig(t, p.dir, tlsConfig), hello(), time.Minute)
	for range 5 {
		c, err := net.Dial("tcp", strings.TrimPrefix(url, "https://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	// Well within the minute the silent connections could hold the one
	// slot for.
	c := client(p.pool, nil)
	c.Timeout = 20 * time.Second
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("a client behind silent connections: %v", err)
	}
	resp.Body.Close()
}

// TestServe_HandshakeLimitStalledHandshake: a client that sends its
// ClientHello and then stalls holds the one slot until its handshake
// times out; the server then closes it, and the next client, which waited,
// is served.
func TestServe_HandshakeLimitStalledHandshake(t *testing.T) {
	p := newPKI(t)
	p.issue("server", 1, true)
	url := serveLimited(t, writeConfig(t, p.dir, tlsConfig), hello(), 2*time.Second)
	addr := strings.TrimPrefix(url, "https://")

	// A real ClientHello, captured from a client writing into a pipe.
	ours, theirs := net.Pipe()
	go func() { _ = tls.Client(theirs, &tls.Config{InsecureSkipVerify: true}).Handshake() }()
	buf := make([]byte, 4096)
	n, err := ours.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	_ = ours.Close()
	stalled, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	if _, err := stalled.Write(buf[:n]); err != nil {
		t.Fatal(err)
	}
	// The server's answer means it holds the slot for this handshake.
	if _, err := stalled.Read(make([]byte, 1)); err != nil {
		t.Fatalf("no ServerHello for the stalled client: %v", err)
	}

	resp, err := client(p.pool, nil).Get(url)
	if err != nil {
		t.Fatalf("the client after the stalled one: %v", err)
	}
	resp.Body.Close()
	// It was served after the server let the stalled handshake go: that
	// connection is closed already.
	_ = stalled.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := io.ReadAll(stalled); err != nil {
		t.Errorf("the stalled connection is still open when the next client is served: %v", err)
	}
}

// TestHandshakeListener_NoDeadlineAfterHandshake: the handshake's deadline
// ends with it; a connection that lives longer (a tunnel, a kept-alive
// scrape connection) is not cut off when it passes.
func TestHandshakeListener_NoDeadlineAfterHandshake(t *testing.T) {
	p := newPKI(t)
	p.issue("server", 1, true)
	cert, err := tls.LoadX509KeyPair(p.dir+"/server.crt", p.dir+"/server.key")
	if err != nil {
		t.Fatal(err)
	}
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	const timeout = 100 * time.Millisecond
	l := newHandshakeListener(raw, &tls.Config{Certificates: []tls.Certificate{cert}}, 1, timeout, slog.New(slog.DiscardHandler))
	defer l.Close()
	go func() {
		c, err := tls.Dial("tcp", raw.Addr().String(), &tls.Config{RootCAs: p.pool})
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c) // echo
	}()
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Past the handshake's deadline, the connection still works both ways.
	time.Sleep(3 * timeout)
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatalf("write after the handshake deadline: %v", err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("read after the handshake deadline: %q, %v", buf, err)
	}
}
