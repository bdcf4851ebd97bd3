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

	"github.com/baremetal-sd/baremetal_sd/collector"
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
	metrics       *collector.Reload
}

func newReloads(webConfigFile string, reg prometheus.Registerer, logger *slog.Logger) *reloads {
	return &reloads{
		webConfigFile: webConfigFile,
		logger:        logger,
		metrics:       collector.NewReload(reg, "server"),
	}
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
			r.metrics.Failed()
			r.logger.Error("Failed to reload the configuration, keeping the previous one", "err", err)
			continue
		}
		r.metrics.Succeeded()
		r.logger.Info("Reloaded the configuration", "web_config", r.webConfigFile)
	}
}
