// Package discovery owns the agent registry of baremetal_sd: the Store
// interface and its implementations, the registry that keeps agents in memory
// with TTL expiry, the HTTP API agents and operators talk to, the Prometheus
// http_sd endpoint and file_sd writer, and the client the agent uses.
package discovery
