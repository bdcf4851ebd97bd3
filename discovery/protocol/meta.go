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

package protocol

// Meta label names of the http_sd target groups.
const (
	MetaPrefix      = "__meta_baremetal_sd_"
	MetaAgentID     = MetaPrefix + "agent_id"
	MetaHostname    = MetaPrefix + "hostname"
	MetaAddress     = MetaPrefix + "address"
	MetaExporter    = MetaPrefix + "exporter"
	MetaMaintenance = MetaPrefix + "maintenance"
	// MetaTunnel is "true" on targets that Prometheus reaches through the
	// server's tunnels (proxy_url), and absent on the others.
	MetaTunnel      = MetaPrefix + "tunnel"
	MetaLabelPrefix = MetaPrefix + "label_"
)

// AgentExporterName names the target group of an agent's own /metrics.
// Relay configurations may not use it for an exporter.
const AgentExporterName = "agent"

// AgentMetricsPath is where an agent serves its own telemetry.
const AgentMetricsPath = "/metrics"
