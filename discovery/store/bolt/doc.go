// Package bolt is the embedded default store.Store: one bbolt file in the
// server's data dir, with agent records and their last-seen times kept apart
// so that a batch of heartbeats never rewrites whole records.
package bolt
