package agent

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/tunnel"
)

// newTunnelClient builds the tunnels to every discovery server. They
// verify the server exactly as the registration client does (the pinned
// CA and the server role) and present the agent's current certificate.
func newTunnelClient(cfg Config, roots *x509.CertPool, lc *lifecycle, reg prometheus.Registerer) (*tunnel.Client, error) {
	local, err := localAddress(cfg.Web)
	if err != nil {
		return nil, err
	}
	c, err := tunnel.NewClient(tunnel.ClientConfig{
		Servers: cfg.DiscoveryURLs,
		TLS: &tls.Config{
			MinVersion:           tls.VersionTLS12,
			RootCAs:              roots,
			VerifyConnection:     discovery.VerifyServerRole,
			GetClientCertificate: lc.clientCertificate,
		},
		Local:   local,
		Metrics: tunnel.NewClientMetrics(reg),
		Logger:  cfg.Logger,
	})
	if err != nil {
		return nil, fmt.Errorf("tunnel: %w", err)
	}
	return c, nil
}
