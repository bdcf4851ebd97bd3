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

package protocol

import "time"

// API paths served by the discovery server.
const (
	PathRegister  = "/api/v1/register"
	PathHeartbeat = "/api/v1/heartbeat"
	PathRenew     = "/api/v1/renew"
	PathSelf      = "/api/v1/agents/self"
	PathDiscovery = "/api/v1/discovery"
	PathAgents    = "/api/v1/agents"
	PathCA        = "/ca.crt"
)

// MaxRequestBody bounds every request body the API reads.
const MaxRequestBody = 1 << 20

// RegisterRequest is the body of POST /api/v1/register.
type RegisterRequest struct {
	Hostname string `json:"hostname"`
	// Address is the host or IP Prometheus scrapes; empty means the
	// request's source address.
	Address   string            `json:"address,omitempty"`
	Port      int               `json:"port"`
	Labels    map[string]string `json:"labels,omitempty"`
	Exporters []Exporter        `json:"exporters,omitempty"`
	// Tunnel says that Prometheus cannot reach the agent directly: it keeps
	// tunnels to the servers, and http_sd lists it for scraping through
	// them (docs/tunnels.md).
	Tunnel bool `json:"tunnel,omitempty"`
	// CSR is a PEM encoded PKCS#10 certificate request made with the agent's
	// own key.
	CSR string `json:"csr"`
	// Certificate is the agent's expired certificate (PEM). It replaces the
	// enrollment token when the host was off for longer than its certificate
	// lived, within the renewal grace window; the CSR proves the key.
	Certificate string `json:"certificate,omitempty"`
}

// RenewRequest is the body of POST /api/v1/renew. Certificate is only needed
// when the agent's certificate has already expired: it then proves, together
// with a CSR signed by the same key, that the host is the one that enrolled.
type RenewRequest struct {
	CSR         string `json:"csr"`
	Certificate string `json:"certificate,omitempty"`
}

// HeartbeatRequest is the optional body of POST /api/v1/heartbeat.
type HeartbeatRequest struct {
	Status string `json:"status,omitempty"`
	// Exporters is the health of the agent's exporters, in the order of
	// its registration. Agents of 0.1.0 send none; servers of 0.1.0 refuse
	// the field with 400, and the agent then leaves it out for a while.
	Exporters []ExporterHealth `json:"exporters,omitempty"`
}

// CertificateResponse answers register and renew.
type CertificateResponse struct {
	AgentID string `json:"agent_id"`
	// Certificate is the PEM chain: the agent certificate, then the agent
	// CA that issued it.
	Certificate string `json:"certificate"`
	// CACertificate is for agents of 0.1.0: the client CA, then the agent
	// CA. Newer agents use the two fields below instead.
	CACertificate string `json:"ca_certificate"`
	// AgentCACertificate is the agent CA (PEM), signed by the server CA
	// that the agent pins.
	AgentCACertificate string `json:"agent_ca_certificate,omitempty"`
	// ClientCACertificate is the client CA (PEM), signed by the server CA
	// that the agent pins: the relay accepts scrapers' certificates from
	// it only.
	ClientCACertificate      string    `json:"client_ca_certificate,omitempty"`
	TTLSeconds               int       `json:"ttl_seconds"`
	HeartbeatIntervalSeconds int       `json:"heartbeat_interval_seconds"`
	RenewAfter               time.Time `json:"renew_after"`
}

// HeartbeatResponse answers a heartbeat.
type HeartbeatResponse struct {
	TTLSeconds               int `json:"ttl_seconds"`
	HeartbeatIntervalSeconds int `json:"heartbeat_interval_seconds"`
	// RenewNow asks the agent to renew at once: its certificate was
	// issued by a 0.1.0 server, directly by the server CA.
	RenewNow bool `json:"renew_now,omitempty"`
}

// MaintenanceRequest is the body of POST /api/v1/agents/{id}/maintenance.
type MaintenanceRequest struct {
	Maintenance bool `json:"maintenance"`
}

// ErrorResponse is the body of every error reply.
type ErrorResponse struct {
	Error string `json:"error"`
}

// Exporter is one exporter an agent relays, addressed by name.
type Exporter struct {
	Name string `json:"name"`
	// Path is the relay path on the agent, for example /exporters/node/metrics.
	Path string `json:"path"`
}
