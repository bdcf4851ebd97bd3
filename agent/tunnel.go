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
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/baremetal-sd/baremetal_sd/discovery/client"
	"github.com/baremetal-sd/baremetal_sd/tunnel"
)

// newTunnelClient builds the tunnels to every discovery server. They
// verify the server exactly as the registration client does (the pinned
// CA and the server role) and present the agent's current certificate.
// They hand their streams to listener, or, when it is nil, dial the first
// listen address.
func newTunnelClient(cfg Config, roots *x509.CertPool, lc *lifecycle, reg prometheus.Registerer, listener *tunnel.Listener) (*tunnel.Client, error) {
	var local string
	if listener == nil {
		var err error
		if local, err = localAddress(cfg.Web); err != nil {
			return nil, err
		}
	}
	c, err := tunnel.NewClient(tunnel.ClientConfig{
		Servers:  cfg.DiscoveryURLs,
		TLS:      tunnelTLS(roots, lc.clientCertificate),
		Listener: listener,
		Local:    local,
		Metrics:  tunnel.NewClientMetrics(reg),
		Logger:   cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	return c, nil
}

// tunnelTLS is the TLS configuration of the tunnels: only a peer that roots
// verify and that holds the server role gets the agent's tunnel, so an
// enrolled host whose certificate chains to the same CA cannot take it.
func tunnelTLS(roots *x509.CertPool, cert func(*tls.CertificateRequestInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		RootCAs:              roots,
		VerifyConnection:     client.VerifyServerRole,
		GetClientCertificate: cert,
	}
}
