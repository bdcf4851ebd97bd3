// Package protocol holds what the discovery server and its clients agree on:
// the API paths, the JSON bodies of /api/v1, the bounds and validation rules
// of a registration (host names, labels, exporter names) and the http_sd meta
// label names. It has no dependencies beyond the standard library, so the
// agent and the relay can use it without the server's storage.
package protocol
