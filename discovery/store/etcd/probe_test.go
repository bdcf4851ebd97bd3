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

package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/baremetal-sd/baremetal_sd/internal/freeport"
)

func TestProbeEndpoint(t *testing.T) {
	// etcd speaks gRPC: HTTP/2 only, as the probe asks.
	tlsServer := httptest.NewUnstartedServer(http.NotFoundHandler())
	tlsServer.EnableHTTP2 = true
	tlsServer.StartTLS()
	t.Cleanup(tlsServer.Close)
	trusted := x509.NewCertPool()
	trusted.AddCert(tlsServer.Certificate())

	plain, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { plain.Close() })
	go func() {
		for {
			c, err := plain.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	plainHTTP := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(plainHTTP.Close)
	closed := fmt.Sprintf("127.0.0.1:%d", freeport.Port(t))
	tlsAddr := strings.TrimPrefix(tlsServer.URL, "https://")

	tests := []struct {
		name     string
		endpoint string
		tls      *tls.Config
		want     string // "" means no finding
	}{
		{"plain endpoint that accepts", "http://" + plain.Addr().String(), nil, ""},
		{"nothing listening", "http://" + closed, nil, "connection refused"},
		{"nothing listening, TLS", "https://" + closed, nil, "connection refused"},
		{"TLS endpoint, trusted", "https://" + tlsAddr, &tls.Config{RootCAs: trusted, ServerName: "example.com"}, ""},
		{"TLS endpoint, not trusted", "https://" + tlsAddr, &tls.Config{RootCAs: x509.NewCertPool()}, "x509: certificate signed by unknown authority"},
		{"https:// to a plain HTTP endpoint", "https://" + strings.TrimPrefix(plainHTTP.URL, "http://"), nil, "first record does not look like a TLS handshake"},
		{"not a URL", "127.0.0.1:2379", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), endpointProbeTimeout)
			defer cancel()
			err := probeEndpoint(ctx, tt.endpoint, tt.tls)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("finding %v, want none", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("finding %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestEndpointProber_Explain(t *testing.T) {
	closed := fmt.Sprintf("http://127.0.0.1:%d", freeport.Port(t))
	p := &endpointProber{endpoints: []string{closed}}
	timeout := fmt.Errorf("get: %w", context.DeadlineExceeded)
	err := p.explain(timeout)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("explained error %v no longer wraps the timeout", err)
	}
	if want := "(connecting to etcd: " + closed + ": connect: connection refused)"; !strings.Contains(err.Error(), want) {
		t.Errorf("explained error %q, want it to contain %q", err, want)
	}
	// An error etcd answered needs no probe and gets no finding.
	answered := errors.New("etcdserver: permission denied")
	if got := p.explain(answered); got.Error() != answered.Error() {
		t.Errorf("explain(%v) = %v, want it unchanged", answered, got)
	}
}
