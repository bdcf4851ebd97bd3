// Package client is the agent's side of the discovery API: register,
// heartbeat, renew and deregister over HTTPS with failover between server
// replicas, and the check that the peer holds a serving certificate. It
// imports neither the registry nor its stores, so the agent's binary
// dependencies stay free of etcd, grpc and bbolt.
package client
