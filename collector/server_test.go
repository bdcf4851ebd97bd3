package collector

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestServer_MetricsLint lints every server metric. Vectors are exported
// only once they have a child, so each gets one.
func TestServer_MetricsLint(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := NewServer(reg)
	m.AgentsByState.WithLabelValues("healthy").Set(1)
	for _, c := range []*prometheus.CounterVec{
		m.Registrations, m.Heartbeats, m.Renewals, m.HTTPSDRequests, m.FileSDWrites,
	} {
		c.WithLabelValues("success").Inc()
	}
	m.CertificatesIssued.WithLabelValues("register").Inc()
	m.TokenRejections.WithLabelValues("expired").Inc()
	m.CertRejections.WithLabelValues("revoked").Inc()
	m.StoreSeconds.WithLabelValues("put").Observe(0.001)
	m.StoreErrors.WithLabelValues("put").Inc()
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}
