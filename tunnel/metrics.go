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
	"github.com/prometheus/client_golang/prometheus"

	"github.com/baremetal-sd/baremetal_sd/tunnel/internal/mux"
)

// ServerMetrics are the server half's metrics.
type ServerMetrics struct {
	Tunnels  prometheus.Gauge
	Streams  prometheus.Gauge
	Opened   prometheus.Counter
	Bytes    *prometheus.CounterVec
	Refusals *prometheus.CounterVec
	// ProtocolErrors counts agents' violations of the tunnel protocol.
	ProtocolErrors *prometheus.CounterVec
}

// NewServerMetrics registers the server half's metrics with reg.
func NewServerMetrics(reg prometheus.Registerer) *ServerMetrics {
	m := &ServerMetrics{
		Tunnels: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "baremetal_sd_tunnel_tunnels",
			Help: "Agent tunnels connected to this server.",
		}),
		Streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "baremetal_sd_tunnel_streams",
			Help: "CONNECT streams open through tunnels of this server.",
		}),
		Opened: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "baremetal_sd_tunnel_streams_opened_total",
			Help: "CONNECT streams opened through tunnels of this server.",
		}),
		Bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "baremetal_sd_tunnel_bytes_total",
			Help: "Bytes forwarded through tunnels, by direction (to_agent, from_agent).",
		}, []string{"direction"}),
		Refusals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "baremetal_sd_tunnel_refusals_total",
			Help: "Refused tunnel connections and CONNECT requests, by reason.",
		}, []string{"reason"}),
		ProtocolErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "baremetal_sd_tunnel_protocol_errors_total",
			Help: "Violations of the tunnel protocol by agents, by reason; each closes the tunnel, but peer_opened_stream, which only resets the stream.",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.Tunnels, m.Streams, m.Opened, m.Bytes, m.Refusals, m.ProtocolErrors)
	}
	for _, r := range refusalReasons {
		m.Refusals.WithLabelValues(r)
	}
	for _, r := range mux.Reasons() {
		m.ProtocolErrors.WithLabelValues(r)
	}
	return m
}

// ClientMetrics are the agent half's metrics.
type ClientMetrics struct {
	Up       *prometheus.GaugeVec
	Failures *prometheus.CounterVec
	Streams  prometheus.Counter
	Refused  prometheus.Counter
}

// NewClientMetrics registers the agent half's metrics with reg.
func NewClientMetrics(reg prometheus.Registerer) *ClientMetrics {
	m := &ClientMetrics{
		Up: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "baremetal_sd_agent_tunnel_up",
			Help: "Whether the agent's tunnel to a discovery server is connected.",
		}, []string{"server"}),
		Failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "baremetal_sd_agent_tunnel_connect_failures_total",
			Help: "Failed attempts to open a tunnel to a discovery server, by reason: refused (nothing listens: the server is down or restarting), connect_, handshake_ or upgrade_ timeout or error, rejected (the server refused the tunnel).",
		}, []string{"server", "reason"}),
		Streams: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "baremetal_sd_agent_tunnel_streams_total",
			Help: "Streams the servers opened through the agent's tunnels.",
		}),
		Refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "baremetal_sd_agent_tunnel_streams_refused_total",
			Help: "Streams refused because the stream limit was reached or the local listener could not be reached.",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Up, m.Failures, m.Streams, m.Refused)
	}
	return m
}
