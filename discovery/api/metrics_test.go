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

package api

import (
	"context"
	"crypto"
	"encoding/json"
	"net/http"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/baremetal-sd/baremetal_sd/ca"
	"github.com/baremetal-sd/baremetal_sd/discovery"
	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
)

// TestAPI_MetricsMove walks an agent through enrollment, a heartbeat, a
// renewal and an http_sd read, and checks that each step shows in the
// server's metrics.
func TestAPI_MetricsMove(t *testing.T) {
	h := newAPIHarness(t)
	m := h.metrics
	counter := func(c *prometheus.CounterVec, label string) float64 {
		return testutil.ToFloat64(c.WithLabelValues(label))
	}
	_, cert := h.enroll(ca.TokenSpec{}, nil)
	if got := counter(m.Registrations, "success"); got != 1 {
		t.Errorf("registrations_total{result=success} = %v, want 1", got)
	}
	if got := counter(m.CertificatesIssued, "register"); got != 1 {
		t.Errorf("certificates_issued_total{reason=register} = %v, want 1", got)
	}
	if got := histogramCount(t, m.StoreSeconds.WithLabelValues("update").(prometheus.Metric)); got < 1 {
		t.Errorf("store_operation_duration_seconds{operation=update} has %d observations, want at least 1", got)
	}

	if rep := h.do(h.client(&cert), "POST", protocol.PathHeartbeat, "", nil); rep.status != http.StatusOK {
		t.Fatalf("heartbeat: %d %s", rep.status, rep.body)
	}
	if got := counter(m.Heartbeats, "success"); got != 1 {
		t.Errorf("heartbeats_total{result=success} = %v, want 1", got)
	}

	renew, _ := json.Marshal(protocol.RenewRequest{CSR: csrPEM(t, cert.PrivateKey.(crypto.Signer))})
	if rep := h.do(h.client(&cert), "POST", protocol.PathRenew, "", renew); rep.status != http.StatusOK {
		t.Fatalf("renew: %d %s", rep.status, rep.body)
	}
	if got := counter(m.Renewals, "success"); got != 1 {
		t.Errorf("renewals_total{result=success} = %v, want 1", got)
	}
	if got := counter(m.CertificatesIssued, "renew"); got != 1 {
		t.Errorf("certificates_issued_total{reason=renew} = %v, want 1", got)
	}

	discoveryCert := h.clientCert(ca.RoleDiscovery)
	if rep := h.do(h.client(&discoveryCert), "GET", protocol.PathDiscovery, "", nil); rep.status != http.StatusOK {
		t.Fatalf("http_sd: %d %s", rep.status, rep.body)
	}
	if got := counter(m.HTTPSDRequests, "200"); got != 1 {
		t.Errorf("httpsd_requests_total{code=200} = %v, want 1", got)
	}
	if got := histogramCount(t, m.HTTPSDResponseBytes); got != 1 {
		t.Errorf("httpsd_response_size_bytes has %d observations, want 1", got)
	}
	if rep := h.do(h.client(nil), "GET", protocol.PathDiscovery, "", nil); rep.status != http.StatusUnauthorized {
		t.Fatalf("anonymous http_sd: %d", rep.status)
	}
	if got := counter(m.HTTPSDRequests, "401"); got != 1 {
		t.Errorf("httpsd_requests_total{code=401} = %v, want 1", got)
	}

	h.reg.Sweep(context.Background())
	if got := testutil.ToFloat64(m.AgentsByState.WithLabelValues(string(discovery.StateHealthy))); got != 1 {
		t.Errorf("registry_agents{state=healthy} = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.StoreUp); got != 1 {
		t.Errorf("store_up = %v, want 1", got)
	}
}

// histogramCount is how many observations a histogram holds.
func histogramCount(t *testing.T, h prometheus.Metric) uint64 {
	t.Helper()
	var pb dto.Metric
	if err := h.Write(&pb); err != nil {
		t.Fatal(err)
	}
	return pb.GetHistogram().GetSampleCount()
}
