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

// Package discovery owns the agent registry of baremetal_sd: the registry
// that keeps agents in memory with TTL expiry on top of a store.Store, the
// HTTP API agents and operators talk to, the Prometheus http_sd endpoint
// and the file_sd writer. The wire types live in discovery/protocol, the
// agent's client in discovery/client and the stores in discovery/store.
package discovery
