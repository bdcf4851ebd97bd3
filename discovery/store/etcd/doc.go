// Package etcd is the store.Store for several server replicas sharing one
// etcd cluster: records under a key prefix, last-seen times in leased blobs,
// a revision mirror fed by a watch so every replica serves the same fleet,
// replica identity and liveness, and a probe that explains an unreachable
// endpoint.
package etcd
