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

// Package discovery is the agent registry side of baremetal_sd. Its
// subpackages hold one concern each: registry (agents in memory with TTL
// expiry on top of a store, and the enrollment, renewal and deregistration
// rules), httpsd (the Prometheus http_sd and file_sd output), api (the HTTP
// API agents, operators and Prometheus talk to), protocol (the wire types),
// client (the agent's client) and store (the stores). This package holds
// what they and the status page share: the agent states and views, the
// fleet summary, the http_sd consumer records, and the admin API's client.
package discovery
