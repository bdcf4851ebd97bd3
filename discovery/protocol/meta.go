package protocol

// Meta label names of the http_sd target groups.
const (
	MetaPrefix      = "__meta_baremetal_sd_"
	MetaAgentID     = MetaPrefix + "agent_id"
	MetaHostname    = MetaPrefix + "hostname"
	MetaAddress     = MetaPrefix + "address"
	MetaExporter    = MetaPrefix + "exporter"
	MetaMaintenance = MetaPrefix + "maintenance"
	MetaLabelPrefix = MetaPrefix + "label_"
)

// AgentExporterName names the target group of an agent's own /metrics.
// Relay configurations may not use it for an exporter.
const AgentExporterName = "agent"

// AgentMetricsPath is where an agent serves its own telemetry.
const AgentMetricsPath = "/metrics"
