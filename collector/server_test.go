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
	"strings"
	"testing"
	"time"

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
	m.RequestRejections.WithLabelValues("cross_origin").Inc()
	m.HTTPSDConsumerRequests.WithLabelValues("cert:prometheus-0", "0/3", "200").Inc()
	m.StoreSeconds.WithLabelValues("put").Observe(0.001)
	m.StoreErrors.WithLabelValues("put").Inc()
	RegisterCertificateExpiry(reg, func() map[string]time.Time { return map[string]time.Time{"ca": time.Unix(1, 0)} })
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

func TestRegisterCertificateExpiry(t *testing.T) {
	expiries := map[string]time.Time{
		"ca":      time.Unix(2000000000, 0),
		"serving": time.Unix(1800000000, 500),
	}
	reg := prometheus.NewRegistry()
	RegisterCertificateExpiry(reg, func() map[string]time.Time { return expiries })
	want := `# HELP baremetal_sd_server_certificate_expiry_timestamp_seconds When the server's own certificates expire (the CA and the TLS serving certificate), in seconds since the epoch.
# TYPE baremetal_sd_server_certificate_expiry_timestamp_seconds gauge
baremetal_sd_server_certificate_expiry_timestamp_seconds{certificate="ca"} 2e+09
baremetal_sd_server_certificate_expiry_timestamp_seconds{certificate="serving"} 1.8e+09
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	// A certificate that can no longer be read leaves; it does not stay at
	// its last value.
	delete(expiries, "serving")
	if n := testutil.CollectAndCount(reg); n != 1 {
		t.Fatalf("after the serving certificate went away: %d series, want 1", n)
	}
}
