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

package server

import (
	"context"
	"log/slog"
	"os"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/baremetal-sd/baremetal_sd/web"
)

// reloads answers reload requests (SIGHUP). The server's reloadable
// configuration is its web config, which the listener already re-reads
// whenever the file changes, keeping the last good version when the new
// one is broken. A reload checks the file now, so that an operator learns
// at once, from the log and baremetal_sd_server_config_last_reload_successful,
// whether the edit took.
type reloads struct {
	webConfigFile string
	logger        *slog.Logger
	successful    prometheus.Gauge
	success       prometheus.Gauge
}

func newReloads(webConfigFile string, reg prometheus.Registerer, logger *slog.Logger) *reloads {
	r := &reloads{
		webConfigFile: webConfigFile,
		logger:        logger,
		successful: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "baremetal_sd", Subsystem: "server", Name: "config_last_reload_successful",
			Help: "1 if the last configuration load or reload succeeded, 0 if it failed and the previous configuration is still in force.",
		}),
		success: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "baremetal_sd", Subsystem: "server", Name: "config_last_reload_success_timestamp_seconds",
			Help: "Time of the last successful configuration load or reload.",
		}),
	}
	reg.MustRegister(r.successful, r.success)
	r.successful.Set(1) // the start loaded it
	r.success.SetToCurrentTime()
	return r
}

// watch reloads on every receive from requests until ctx ends.
func (r *reloads) watch(ctx context.Context, requests <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-requests:
		}
		if _, err := web.LoadConfig(r.webConfigFile); err != nil {
			r.successful.Set(0)
			r.logger.Error("Failed to reload the configuration, keeping the previous one", "err", err)
			continue
		}
		r.successful.Set(1)
		r.success.SetToCurrentTime()
		r.logger.Info("Reloaded the configuration", "web_config", r.webConfigFile)
	}
}
