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

// Package registry keeps every agent in memory on top of a store.Store:
// TTL expiry, retention and purging, heartbeats batched into the store,
// and the rules of enrollment, renewal, deregistration and the operator's
// changes as methods with typed errors (ErrRevoked, ErrSuperseded,
// *LabelConflictError, ...). Durable changes go to the store first and are
// visible only once it accepted them. The http_sd output reads it through
// EachListed and the shard generations.
package registry
