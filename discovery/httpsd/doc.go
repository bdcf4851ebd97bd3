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

// Package httpsd renders the registry as Prometheus http_sd and file_sd
// output: a cache of per-shard fragments for each filter (label, exporter,
// tunnel and scrape-shard parameters), the entity tag and content
// negotiation of the http_sd endpoint, the log of who fetches it, and the
// file_sd writer. The gzip member is spliced from per-shard deflate
// segments by internal/gzsplice.
package httpsd
