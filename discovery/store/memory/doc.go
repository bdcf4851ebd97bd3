// Package memory is a store.Store that keeps everything in memory: for tests
// and throwaway servers.
package memory
