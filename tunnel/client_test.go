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

package tunnel

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/internal/bufpool"
	"github.com/baremetal-sd/baremetal_sd/internal/freeport"
)

// TestClient_TLSForIdleTunnels: what the server keeps per tunnel depends on
// what the agent sends in its handshake: its certificate without the
// issuer, and a ClientHello without the hybrid post-quantum key share,
// unless the caller chose curves itself.
func TestClient_TLSForIdleTunnels(t *testing.T) {
	chain := tls.Certificate{Certificate: [][]byte{[]byte("leaf"), []byte("issuer")}}
	for _, tc := range []struct {
		name       string
		tls        *tls.Config
		wantCurves []tls.CurveID
	}{
		{"static certificate", &tls.Config{Certificates: []tls.Certificate{chain}}, []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}},
		{"certificate callback", &tls.Config{GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &chain, nil }}, []tls.CurveID{tls.X25519, tls.CurveP256, tls.CurveP384, tls.CurveP521}},
		{"curves chosen by the caller", &tls.Config{Certificates: []tls.Certificate{chain}, CurvePreferences: []tls.CurveID{tls.X25519MLKEM768}}, []tls.CurveID{tls.X25519MLKEM768}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(ClientConfig{Servers: []string{"https://127.0.0.1:1"}, TLS: tc.tls, Local: "127.0.0.1:2"})
			if err != nil {
				t.Fatal(err)
			}
			got := c.cfg.TLS
			var sent *tls.Certificate
			if got.GetClientCertificate != nil {
				if sent, err = got.GetClientCertificate(&tls.CertificateRequestInfo{}); err != nil {
					t.Fatal(err)
				}
			} else {
				sent = &got.Certificates[0]
			}
			if len(sent.Certificate) != 1 || string(sent.Certificate[0]) != "leaf" {
				t.Errorf("the tunnel presents %q, want the leaf alone", sent.Certificate)
			}
			if !slices.Equal(got.CurvePreferences, tc.wantCurves) {
				t.Errorf("curves: %v, want %v", got.CurvePreferences, tc.wantCurves)
			}
			// The caller's own configuration is left as it was.
			if len(tc.tls.Certificates) > 0 && len(tc.tls.Certificates[0].Certificate) != 2 {
				t.Fatal("the caller's certificate lost its chain")
			}
		})
	}
}

// TestClient_FailureReasons: every failed attempt is counted under what
// went wrong, so that an operator (and the reconnection benchmark) can tell
// a server that is down, which a restart is, from one that is up and
// failing, and an impostor from an overloaded server.
func TestClient_FailureReasons(t *testing.T) {
	f := newFleet(t, ServerConfig{})
	serving, err := tls.LoadX509KeyPair(filepath.Join(f.dataDir, ca.ServerCertFile), filepath.Join(f.dataDir, ca.ServerKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	// listen serves every connection with handle, on a loopback port.
	listen := func(t *testing.T, handle func(net.Conn)) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		t.Cleanup(func() { _ = l.Close(); wg.Wait() })
		wg.Go(func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				wg.Go(func() { defer c.Close(); handle(c) })
			}
		})
		return "https://" + l.Addr().String()
	}
	// silent reads until the client gives up.
	silent := func(c net.Conn) { _, _ = io.Copy(io.Discard, c) }
	// handshaken completes the TLS handshake with the real server
	// certificate, then does what next says.
	handshaken := func(next func(net.Conn)) func(net.Conn) {
		return func(c net.Conn) {
			tc := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{serving}})
			if tc.Handshake() != nil {
				return
			}
			next(tc)
		}
	}
	impostorCA := foreignCA(t)
	impostor := issueClient(t, impostorCA, "127.0.0.1", ca.RoleDiscovery)

	agent := f.agentCert(t, "a1", "host-a")
	f.dir.set(Agent{ID: "a1", Hostname: "host-a", Port: 9100, Listed: true, Tunnel: true})
	stranger := f.agentCert(t, "a2", "host-b")
	for _, tc := range []struct {
		name   string
		server string
		cert   tls.Certificate
		want   string
	}{
		{"nothing listens", "https://127.0.0.1:" + strconv.Itoa(freeport.Port(t)), agent, "refused"},
		{"server never answers the handshake", listen(t, silent), agent, "handshake_timeout"},
		{"impostor server", listen(t, func(c net.Conn) {
			_ = tls.Server(c, &tls.Config{Certificates: []tls.Certificate{impostor}}).Handshake()
		}), agent, "handshake_error"},
		{"server never answers the upgrade", listen(t, handshaken(silent)), agent, "upgrade_timeout"},
		{"server closes after the handshake", listen(t, handshaken(func(c net.Conn) {
			_, _ = bufio.NewReader(c).ReadString('\n')
		})), agent, "upgrade_error"},
		{"server refuses the tunnel", f.url, stranger, "rejected"},
		{"tunnel opens", f.url, agent, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := NewClient(ClientConfig{
				Servers:          []string{tc.server},
				TLS:              &tls.Config{RootCAs: f.serverRoots, Certificates: []tls.Certificate{tc.cert}},
				Local:            "127.0.0.1:9",
				HandshakeTimeout: 500 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			u, _ := url.Parse(tc.server)
			tlsConfig := c.cfg.TLS.Clone()
			tlsConfig.ServerName = u.Hostname()
			mux, err := c.open(context.Background(), u, tlsConfig)
			if tc.want == "" {
				if err != nil {
					t.Fatalf("open: %v", err)
				}
				_ = mux.Close()
				return
			}
			if err == nil {
				_ = mux.Close()
				t.Fatalf("open succeeded, want a failure counted as %s", tc.want)
			}
			if got := failureReason(err); got != tc.want {
				t.Errorf("failure %q counted as %s, want %s", err, got, tc.want)
			}
		})
	}
}

// TestClient_RetryWait: after a tunnel that was up closes (all of a
// server's agents at once, when it restarts), the first attempt is spread
// over five minimum backoffs; failed attempts back off exponentially with
// full jitter up to the maximum.
func TestClient_RetryWait(t *testing.T) {
	c, err := NewClient(ClientConfig{Servers: []string{"https://127.0.0.1:1"}, Local: "127.0.0.1:2"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		attempt  int
		lost     bool
		min, max time.Duration
	}{
		{"first attempt after losing the tunnel", 0, true, 0, 5 * time.Second},
		{"after the first failure", 0, false, 500 * time.Millisecond, 1500 * time.Millisecond},
		{"after the third failure", 2, false, 500 * time.Millisecond, 4500 * time.Millisecond},
		{"after many failures", 20, false, 500 * time.Millisecond, 30500 * time.Millisecond},
		{"a lost tunnel after failures", 3, true, 500 * time.Millisecond, 8500 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			lo, hi := time.Duration(1<<62), time.Duration(0)
			for range 2000 {
				w := c.retryWait(tc.attempt, tc.lost)
				lo, hi = min(lo, w), max(hi, w)
			}
			if lo < tc.min || hi >= tc.max {
				t.Fatalf("waits from %s to %s, want within [%s, %s)", lo, hi, tc.min, tc.max)
			}
			// Spread over the window, not bunched: 2,000 uniform draws
			// leave neither tenth of it empty but by a chance of 0.9^2000.
			if span := tc.max - tc.min; lo > tc.min+span/10 || hi < tc.max-span/10 {
				t.Fatalf("waits from %s to %s do not cover [%s, %s)", lo, hi, tc.min, tc.max)
			}
		})
	}
}

// startListenerAgent is startAgentHandler as the agent runs: its relay
// serves a Listener, to which the tunnel hands its streams in process.
func (f *fleet) startListenerAgent(t testing.TB, id, hostname string, handler http.HandlerFunc) int {
	t.Helper()
	return f.startRelay(t, id, hostname, handler, true)
}

// TestClient_StreamsInProcess: with a Listener, a tunneled scrape reaches
// the relay in process, and the relay's TLS still decides who scrapes: a
// scraper that is let through the server but shows the relay no
// certificate of a scraper is refused by the agent itself.
func TestClient_StreamsInProcess(t *testing.T) {
	f := newFleet(t, ServerConfig{})
	remotes := make(chan string, 10)
	port := f.startListenerAgent(t, "a1", "host-a", func(w http.ResponseWriter, r *http.Request) {
		if role, _, err := ca.Identify(r.TLS.PeerCertificates[0]); err != nil || role != ca.RoleDiscovery {
			http.Error(w, "scrapers only", http.StatusForbidden)
			return
		}
		remotes <- r.RemoteAddr
		_, _ = io.WriteString(w, "up 1\n")
	})
	target := "host-a:" + strconv.Itoa(port)
	agentRoots := x509.NewCertPool()
	agentRoots.AddCert(f.authority.AgentCACertificate())
	impostorCA := foreignCA(t)
	agentCert := f.agentCert(t, "a2", "host-b")
	foreign := issueClient(t, impostorCA, "prometheus", ca.RoleDiscovery)
	for _, tc := range []struct {
		name  string
		inner *tls.Certificate // what the scraper shows the agent
		ok    bool
	}{
		{"scraper certificate", &f.scraper, true},
		{"no certificate", &tls.Certificate{}, false},
		{"certificate of the agent CA", &agentCert, false},
		{"foreign scraper certificate", &foreign, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tls.Dial("tcp", strings.TrimPrefix(f.url, "https://"), &tls.Config{RootCAs: f.serverRoots, ServerName: "localhost", Certificates: []tls.Certificate{f.scraper}})
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			fmt.Fprintf(conn, "CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n", target, target)
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("CONNECT: %v %v", resp, err)
			}
			inner := tls.Client(conn, &tls.Config{
				RootCAs: agentRoots, ServerName: "host-a",
				// Sent whatever CAs the agent names.
				GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return tc.inner, nil },
			})
			req, _ := http.NewRequest(http.MethodGet, "https://"+target+"/metrics", nil)
			err = req.Write(inner)
			if err == nil {
				resp, err = http.ReadResponse(bufio.NewReader(inner), req)
			}
			if !tc.ok {
				if err == nil {
					t.Fatalf("the agent answered %s to a scraper it cannot verify", resp.Status)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK || string(body) != "up 1\n" {
				t.Fatalf("scrape: %d %q", resp.StatusCode, body)
			}
			// The relay sees the tunnel's server as the scrape's peer.
			if got := <-remotes; got != strings.TrimPrefix(f.url, "https://") {
				t.Errorf("the relay sees the scrape from %s, want the server %s", got, f.url)
			}
		})
	}
}

// TestListener_AcceptsBoth: the Listener returns the connections of the
// listener it wraps and the streams handed to it, until it is closed;
// then a stream finds no taker.
func TestListener_AcceptsBoth(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(tcp)
	defer l.Close()
	accepted := make(chan net.Conn)
	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}
	}()

	dialed, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer dialed.Close()
	c := <-accepted
	if c.RemoteAddr().String() != dialed.LocalAddr().String() {
		t.Errorf("accepted %s, want the dialed connection from %s", c.RemoteAddr(), dialed.LocalAddr())
	}
	_ = c.Close()

	ours, theirs := memPipe(&bufpool.Pool{}, testAddr("server"), l.Addr())
	if err := l.hand(context.Background(), theirs); err != nil {
		t.Fatal(err)
	}
	if c := <-accepted; c != theirs {
		t.Errorf("accepted %v, want the stream handed over", c)
	}
	_ = ours.Close()

	_ = l.Close()
	if err := <-acceptErr; !errors.Is(err, net.ErrClosed) {
		t.Errorf("Accept after Close: %v, want net.ErrClosed", err)
	}
	_, theirs = memPipe(&bufpool.Pool{}, testAddr("server"), l.Addr())
	if err := l.hand(context.Background(), theirs); !errors.Is(err, net.ErrClosed) {
		t.Errorf("hand after Close: %v, want net.ErrClosed", err)
	}
}
