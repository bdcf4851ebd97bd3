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

import "github.com/prometheus/client_golang/prometheus"

// Reload reports the outcome of configuration loads the way Prometheus
// does, so that the same alert (config_last_reload_successful == 0) covers
// the server and the agent.
type Reload struct {
	successful prometheus.Gauge
	success    prometheus.Gauge
}

// NewReload registers the reload metrics of one role ("server" or "agent")
// on reg. The start-up load counts as the first successful one: a role that
// cannot load its configuration does not start.
func NewReload(reg prometheus.Registerer, role string) *Reload {
	r := &Reload{
		successful: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "baremetal_sd", Subsystem: role, Name: "config_last_reload_successful",
			Help: "1 if the last configuration load or reload succeeded, 0 if it failed and the previous configuration is still in force.",
		}),
		success: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "baremetal_sd", Subsystem: role, Name: "config_last_reload_success_timestamp_seconds",
			Help: "Time of the last successful configuration load or reload.",
		}),
	}
	reg.MustRegister(r.successful, r.success)
	r.Succeeded()
	return r
}

// Succeeded records a load that took effect.
func (r *Reload) Succeeded() {
	r.successful.Set(1)
	r.success.SetToCurrentTime()
}

// Failed records a load that was refused; the previous configuration stays.
func (r *Reload) Failed() {
	r.successful.Set(0)
}
