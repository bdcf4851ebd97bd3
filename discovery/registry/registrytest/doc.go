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

// Package registrytest holds what the tests of the registry and of the
// packages built on it (httpsd, api) share: a settable clock, a store of
// synthetic agents for the benchmarks, and a real etcd store under a prefix
// of its own. It does not import the registry, so that the registry's own
// tests can use it; production code does not import it.
package registrytest
