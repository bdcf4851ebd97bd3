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

package agent

import (
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/version"
)

// infoCollector exposes baremetal_sd_agent_info: one series per host with
// the version, the hostname and each agent label as label_<name>, so that
// queries join the host's metadata rather than every series carrying it
// (prometheus/prometheus#11362). It reads the labels of the configuration
// in force, so a reload changes it.
type infoCollector struct {
	hostname string
	labels   func() map[string]string
}

// Describe sends nothing: the label names follow the agent's labels, which
// a reload may change, so the collector is unchecked.
func (c *infoCollector) Describe(chan<- *prometheus.Desc) {}

func (c *infoCollector) Collect(ch chan<- prometheus.Metric) {
	labels := c.labels()
	names := []string{"version", "hostname"}
	values := []string{version.Version, c.hostname}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		// Agent label names are classic label names (protocol.ValidateLabelName).
		names = append(names, "label_"+k)
		values = append(values, labels[k])
	}
	desc := prometheus.NewDesc("baremetal_sd_agent_info",
		"Metadata of this host's agent, always 1: version, hostname, and each agent label as label_<name>.", names, nil)
	ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, 1, values...)
}
