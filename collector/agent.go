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

package collector

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Agent holds the self-metrics of the agent's lifecycle: registration,
// heartbeats and certificate renewal. The relay's metrics live in Relay.
type Agent struct {
	RegistrationState     *prometheus.GaugeVec
	LastHeartbeatSuccess  prometheus.Gauge
	CertificateExpiry     prometheus.Gauge
	CertificateRenewAfter prometheus.Gauge
	Heartbeats            *prometheus.CounterVec
	Registrations         *prometheus.CounterVec
	Renewals              *prometheus.CounterVec
	Deregistrations       *prometheus.CounterVec
	// RefusedRequests counts requests the agent refused because the client
	// certificate, though from the fleet's CA, is not a scraper's.
	RefusedRequests *prometheus.CounterVec

	// states are the values of RegistrationState's state label; the agent
	// owns them.
	states []string
}

// NewAgent creates the agent metrics and registers them with reg. states
// lists every registration state the agent can be in: each gets a series
// from the start, and SetState sets exactly one of them to 1.
func NewAgent(reg prometheus.Registerer, states []string) *Agent {
	const ns, sub = "baremetal_sd", "agent"
	m := &Agent{
		states: states,
		RegistrationState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "registration_state",
			Help: "1 for the agent's current registration state (enrolling, registered, unreachable, revoked, token_needed, refused), 0 for the others.",
		}, []string{"state"}),
		LastHeartbeatSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "last_heartbeat_success_timestamp_seconds",
			Help: "Unix time of the last heartbeat the discovery server acknowledged.",
		}),
		CertificateExpiry: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "certificate_expiry_timestamp_seconds",
			Help: "Unix time at which the agent's certificate expires; 0 without a certificate.",
		}),
		CertificateRenewAfter: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: sub, Name: "certificate_renew_after_timestamp_seconds",
			Help: "Unix time from which the agent renews its certificate; 0 without a certificate.",
		}),
		Heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "heartbeats_total",
			Help: "Heartbeats sent, by result (success, not_found, rejected, bad_request, error).",
		}, []string{"result"}),
		Registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "registrations_total",
			Help: "Registrations (enrollment with a token, or re-registration with a certificate), by result.",
		}, []string{"result"}),
		Renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "renewals_total",
			Help: "Certificate renewals, by result.",
		}, []string{"result"}),
		Deregistrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "deregistrations_total",
			Help: "Deregistrations on shutdown, by result.",
		}, []string{"result"}),
		RefusedRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: sub, Name: "refused_requests_total",
			Help: "Requests refused because the client certificate is not a scraper's (discovery or admin role), by the certificate's role.",
		}, []string{"role"}),
	}
	for _, s := range m.states {
		m.RegistrationState.WithLabelValues(s)
	}
	for _, r := range []string{"success", "not_found", "rejected", "bad_request", "error"} {
		m.Heartbeats.WithLabelValues(r)
		m.Registrations.WithLabelValues(r)
		m.Renewals.WithLabelValues(r)
	}
	reg.MustRegister(m.RegistrationState, m.LastHeartbeatSuccess, m.CertificateExpiry,
		m.CertificateRenewAfter, m.Heartbeats, m.Registrations, m.Renewals, m.Deregistrations,
		m.RefusedRequests)
	return m
}

// SetState marks state, one of the states NewAgent was given, as the
// current registration state.
func (m *Agent) SetState(state string) {
	for _, s := range m.states {
		v := 0.0
		if s == state {
			v = 1
		}
		m.RegistrationState.WithLabelValues(s).Set(v)
	}
}
