// Package bench is the load generator behind BENCHMARKS.md: the commands of
// baremetal_sd-bench (bench/cmd/baremetal_sd-bench, `make build-bench`) that
// measure a discovery server running on the same machine. The release binary
// does not carry them.
//
//   - bench register: registrations per second end to end (agent key and CSR,
//     enrollment token, new TLS connection, durable store write).
//   - bench heartbeat: heartbeats per second and latency over keep-alive mTLS.
//   - bench httpsd: http_sd fetch time from the cache and after a change, and
//     the server's memory.
//   - bench populate: synthetic agents written straight into a stopped
//     server's bolt registry, to reach 100,000 agents quickly.
//
// The load generator only talks to loopback addresses, bounds every loop by
// count and time, and speaks HTTP/1.1 on its TLS connections directly so that
// it takes as little CPU as possible from the server it shares the machine
// with.
package bench
