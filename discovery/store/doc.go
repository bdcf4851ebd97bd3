// Package store defines what the registry persists and how: the agent
// record, the Store interface every backend implements and the errors they
// share. The backends live below it (memory, bolt, etcd), each in its own
// package, so that importing the record type never links a database.
package store
