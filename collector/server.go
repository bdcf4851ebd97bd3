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
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Server holds the self-metrics of the discovery server. Gauges that describe
// the registry as a whole (agents by state) are set by the registry's sweep so
// that a scrape never walks 100,000 agents.
type Server struct {
	AgentsByState        *prometheus.GaugeVec
	Registrations        *prometheus.CounterVec
	Heartbeats           *prometheus.CounterVec
	Renewals             *prometheus.CounterVec
	CertificatesIssued   *prometheus.CounterVec
	TokenRejections      *prometheus.CounterVec
	CertRejections       *prometheus.CounterVec
	RequestRejections    *prometheus.CounterVec
	Expirations          prometheus.Counter
	Purges               prometheus.Counter
	HTTPSDRequests       *prometheus.CounterVec
	HTTPSDResponseBytes  prometheus.Histogram
	HTTPSDRebuildSeconds prometheus.Histogram
	StoreSeconds         *prometheus.HistogramVec
	StoreErrors          *prometheus.CounterVec
	StoreUp              prometheus.Gauge
	HeartbeatFlushSize   prometheus.Histogram
	FileSDWrites         *prometheus.CounterVec

	// HTTPSDConsumerRequests counts http_sd requests per consumer (client
	// certificate or token), scrape shard and code. The discovery package's
	// consumer log bounds the consumer and shard values.
	HTTPSDConsumerRequests *prometheus.CounterVec
}

// NewServer creates the server metrics and registers them with reg.
func NewServer(reg prometheus.Registerer) *Server {
	const ns = "baremetal_sd"
	m := &Server{
		AgentsByState: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: "registry", Name: "agents",
			Help: "Registered agents by state (healthy, stale, maintenance, expired, revoked).",
		}, []string{"state"}),
		Registrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "registry", Name: "registrations_total",
			Help: "Registration requests by result.",
		}, []string{"result"}),
		Heartbeats: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "registry", Name: "heartbeats_total",
			Help: "Heartbeat requests by result.",
		}, []string{"result"}),
		Renewals: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "registry", Name: "renewals_total",
			Help: "Certificate renewal requests by result.",
		}, []string{"result"}),
		CertificatesIssued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "ca", Name: "certificates_issued_total",
			Help: "Certificates signed by the CA, by reason (register, renew).",
		}, []string{"reason"}),
		TokenRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "auth", Name: "token_rejections_total",
			Help: "Bearer tokens refused, by reason.",
		}, []string{"reason"}),
		CertRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "auth", Name: "certificate_rejections_total",
			Help: "Client certificates refused, by reason.",
		}, []string{"reason"}),
		RequestRejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "api", Name: "request_rejections_total",
			Help: "State-changing API requests refused before authentication, by reason (cross_origin, content_type).",
		}, []string{"reason"}),
		Expirations: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "registry", Name: "expirations_total",
			Help: "Agents that missed heartbeats for longer than the TTL and left http_sd.",
		}),
		Purges: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "registry", Name: "purges_total",
			Help: "Expired, deregistered or revoked agents removed from the store after the retention window.",
		}),
		HTTPSDRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "httpsd", Name: "requests_total",
			Help: "http_sd requests by response code.",
		}, []string{"code"}),
		HTTPSDResponseBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: "httpsd", Name: "response_size_bytes",
			Help:    "Size of http_sd response bodies as sent (after compression).",
			Buckets: prometheus.ExponentialBuckets(256, 4, 10),
		}),
		HTTPSDRebuildSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: "httpsd", Name: "rebuild_duration_seconds",
			Help:    "Time spent re-serializing changed parts of an http_sd response.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}),
		StoreSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: "store", Name: "operation_duration_seconds",
			Help:    "Latency of registry store operations.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 9),
		}, []string{"operation"}),
		StoreErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "store", Name: "errors_total",
			Help: "Failed registry store operations.",
		}, []string{"operation"}),
		StoreUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Subsystem: "store", Name: "up",
			Help: "1 if the last store operation succeeded, 0 if the store is unreachable.",
		}),
		HeartbeatFlushSize: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Subsystem: "registry", Name: "heartbeat_flush_agents",
			Help:    "Agents whose last-seen time was written per batched store flush.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 10),
		}),
		FileSDWrites: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "filesd", Name: "writes_total",
			Help: "file_sd files written, by result.",
		}, []string{"result"}),
		HTTPSDConsumerRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Subsystem: "httpsd", Name: "consumer_requests_total",
			Help: "Authenticated http_sd requests by consumer (cert:NAME, token:ID, anonymous; other past a bound), scrape shard (I/N or all) and response code.",
		}, []string{"consumer", "shard", "code"}),
	}
	reg.MustRegister(m.AgentsByState, m.Registrations, m.Heartbeats, m.Renewals,
		m.CertificatesIssued, m.TokenRejections, m.CertRejections, m.RequestRejections, m.Expirations,
		m.Purges, m.HTTPSDRequests, m.HTTPSDResponseBytes, m.HTTPSDRebuildSeconds,
		m.StoreSeconds, m.StoreErrors, m.StoreUp, m.HeartbeatFlushSize, m.FileSDWrites)
	reg.MustRegister(m.HTTPSDConsumerRequests)
	return m
}

// certificateExpiryCollector exposes when the server's own certificates
// expire. They are read when scraped, so a certificate the operator replaced
// on disk shows at once.
type certificateExpiryCollector struct {
	expiries func() map[string]time.Time
	desc     *prometheus.Desc
}

// RegisterCertificateExpiry registers
// baremetal_sd_server_certificate_expiry_timestamp_seconds, one series per
// certificate that expiries returns (for example "ca" and "serving"). A
// certificate that cannot be read is left out, and its series goes absent.
func RegisterCertificateExpiry(reg prometheus.Registerer, expiries func() map[string]time.Time) {
	reg.MustRegister(&certificateExpiryCollector{
		expiries: expiries,
		desc: prometheus.NewDesc("baremetal_sd_server_certificate_expiry_timestamp_seconds",
			"When the server's own certificates expire (the CA and the TLS serving certificate), in seconds since the epoch.",
			[]string{"certificate"}, nil),
	})
}

func (c *certificateExpiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *certificateExpiryCollector) Collect(ch chan<- prometheus.Metric) {
	for name, notAfter := range c.expiries() {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(notAfter.Unix()), name)
	}
}
