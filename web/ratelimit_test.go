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
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"testing"
	"time"
)

// TestServe_RateLimitPerClient is the attack of an anonymous flood against a
// server with rate_limit on: with one limiter for the whole server it spent
// the budget of the agents too, and their heartbeats failed with 429. Each
// client now has a budget of its own, and authenticated clients one apart
// from everyone without a certificate.
func TestServe_RateLimitPerClient(t *testing.T) {
	p := newPKI(t)
	p.issue("server", 1, true)
	agent1, agent2 := p.clientCert("agent1"), p.clientCert("agent2")
	const burst = 3
	path := writeConfig(t, p.dir, tlsConfig+"  client_auth_type: VerifyClientCertIfGiven\n  client_ca_file: ca.crt\n"+
		fmt.Sprintf("rate_limit:\n  burst: %d\n  interval: 1h\n", burst))
	url, _ := serve(t, path, hello())

	status := func(c *http.Client) int {
		t.Helper()
		resp, err := c.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// The flood: a bounded loop of anonymous requests from 127.0.0.1, while
	// an agent heartbeats.
	const flood = 100
	limited := make(chan int, 1)
	go func() {
		anonymous := client(p.pool, nil)
		n := 0
		for range flood {
			resp, err := anonymous.Get(url)
			if err != nil {
				continue
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusTooManyRequests {
				n++
			}
		}
		limited <- n
	}()
	heartbeats := client(p.pool, &agent1)
	for i := range burst {
		if got := status(heartbeats); got != http.StatusOK {
			t.Fatalf("heartbeat %d during the flood: %d, want 200", i+1, got)
		}
	}
	if n := <-limited; n != flood-burst {
		t.Fatalf("anonymous flood: %d of %d requests limited, want %d", n, flood, flood-burst)
	}

	tests := []struct {
		name   string
		client *http.Client
	}{
		{"another agent certificate", client(p.pool, &agent2)},
		{"anonymous from another address", fromAddr(client(p.pool, nil), "127.0.0.2")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range burst {
				if got := status(tt.client); got != http.StatusOK {
					t.Fatalf("request %d after the flood: %d, want 200", i+1, got)
				}
			}
			// Its own budget is limited all the same.
			if got := status(tt.client); got != http.StatusTooManyRequests {
				t.Fatalf("request past the burst: %d, want 429", got)
			}
		})
	}
}

// fromAddr makes c connect from a local address of loopback's 127/8.
func fromAddr(c *http.Client, ip string) *http.Client {
	tr := c.Transport.(*http.Transport)
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		return d.DialContext(ctx, network, addr)
	}
	return c
}

func TestRateKey(t *testing.T) {
	leaf := &x509.Certificate{Raw: []byte("leaf")}
	tests := []struct {
		name         string
		remote       string
		tls          *tls.ConnectionState
		wantVerified bool
		wantKey      string
	}{
		{"IPv4", "192.0.2.7:1234", nil, false, "192.0.2.7"},
		{"IPv6 by /64", "[2001:db8:1:2:aaaa::1]:1234", nil, false, "2001:db8:1:2::/64"},
		{"IPv6 same /64", "[2001:db8:1:2:bbbb::9]:99", nil, false, "2001:db8:1:2::/64"},
		{"IPv4-mapped IPv6", "[::ffff:192.0.2.7]:1", nil, false, "192.0.2.7"},
		{"unverified certificate is anonymous", "192.0.2.7:1", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}, false, "192.0.2.7"},
		{"verified certificate", "192.0.2.7:1", &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}, VerifiedChains: [][]*x509.Certificate{{leaf}}}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: tt.remote, TLS: tt.tls}
			verified, key := rateKey(r)
			if verified != tt.wantVerified || (tt.wantKey != "" && key != tt.wantKey) {
				t.Fatalf("rateKey = %v, %q; want %v, %q", verified, key, tt.wantVerified, tt.wantKey)
			}
		})
	}
}

// TestClientLimits_Bounded: the tables never grow past max. A full
// anonymous table refuses new clients until their buckets refill, a full
// table of authenticated clients admits them all the same.
func TestClientLimits_Bounded(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	c := newClientLimits(time.Second, 2)
	c.max = 8
	c.now = func() time.Time { return now }
	anon := func(i int) *http.Request { return &http.Request{RemoteAddr: fmt.Sprintf("10.0.%d.%d:1", i/256, i%256)} }
	verified := func(i int) *http.Request {
		leaf := &x509.Certificate{Raw: []byte(fmt.Sprint("cert ", i))}
		return &http.Request{RemoteAddr: "10.1.0.1:1", TLS: &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}}
	}

	admitted, refused := 0, 0
	for i := range 1000 {
		if c.allow(anon(i)) {
			admitted++
		} else {
			refused++
		}
		if !c.allow(verified(i)) {
			t.Fatalf("authenticated client %d refused: its table is full of others", i)
		}
		if n, m := len(c.anonymous.limiters), len(c.verified.limiters); n > c.max || m > c.max {
			t.Fatalf("tables grew to %d and %d entries, max %d", n, m, c.max)
		}
	}
	if admitted != c.max || refused != 1000-c.max {
		t.Fatalf("within one instant: %d anonymous clients admitted, %d refused; want %d admitted", admitted, refused, c.max)
	}
	// Once the buckets refilled, the sweep makes room again.
	now = now.Add(2 * time.Second)
	if !c.allow(anon(5000)) {
		t.Fatal("a new anonymous client refused after the others' buckets refilled")
	}
}

// BenchmarkClientLimits_Allow is the cost rate_limit adds to a request:
// the key (a SHA-256 of the certificate, or the parsed source address), a
// map lookup and the limiter, under one mutex.
func BenchmarkClientLimits_Allow(b *testing.B) {
	leaf := &x509.Certificate{Raw: make([]byte, 600)} // about an agent certificate's DER size
	for _, bb := range []struct {
		name string
		req  *http.Request
	}{
		{"verified", &http.Request{RemoteAddr: "192.0.2.1:1", TLS: &tls.ConnectionState{VerifiedChains: [][]*x509.Certificate{{leaf}}}}},
		{"anonymous", &http.Request{RemoteAddr: "192.0.2.1:1"}},
	} {
		b.Run(bb.name, func(b *testing.B) {
			c := newClientLimits(time.Nanosecond, 1<<30)
			b.ReportAllocs()
			for b.Loop() {
				c.allow(bb.req)
			}
		})
	}
}
