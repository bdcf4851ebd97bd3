// Package discovery owns the agent registry of baremetal_sd: the registry
// that keeps agents in memory with TTL expiry on top of a store.Store, the
// HTTP API agents and operators talk to, the Prometheus http_sd endpoint
// and the file_sd writer. The wire types live in discovery/protocol, the
// agent's client in discovery/client and the stores in discovery/store.
package discovery
