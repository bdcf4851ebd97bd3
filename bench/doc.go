// Copyright The baremetal_sd Authors
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
// http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.

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
