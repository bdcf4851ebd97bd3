// Package server is the discovery server role of baremetal_sd: it prepares
// the data directory (CA, token key, serving certificate, registry), wires
// the registry, API, http_sd and metrics together and serves them over TLS
// until its context ends.
package server
