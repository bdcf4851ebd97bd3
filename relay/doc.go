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

// Package relay is the agent's streaming relabeling proxy. It scrapes the
// local exporters listed in its configuration, parses their output family by
// family with Prometheus' own parsers, relabels every series with
// Prometheus' relabel package (so metric_relabel_configs behave exactly as
// in prometheus.yml), and writes the result in the format the scraper
// negotiated. Memory is bounded by one metric family, not by the payload.
//
// A scrape goes through these stages, each in its own file:
//
//   - relay.go: the HTTP handler, one exporter's scrape, the pipeline pool.
//   - format.go: Accept negotiation and Content-Types (see docs/relay.md).
//   - fetch.go: the upstream request, its checks and failure reasons.
//   - pipeline.go: a pipeline's state and the choice between the paths.
//   - chunk.go, parse.go: cutting text bodies into chunks and parsing them.
//   - direct.go: text to text and OpenMetrics to OpenMetrics, writing
//     series from the parser's text; seriescache.go remembers relabel
//     outcomes for it across scrapes; textenc.go writes the lines.
//   - families.go, dto.go, encode.go: conversions, through metric
//     families; protobuf.go reads protobuf frames, pbcheck.go validates
//     their metrics and bounds their decoded size, pbmetric.go relabels
//     them; pbstream.go relays most families of protobuf input from
//     their wire bytes instead, through seriescache.go, into protobuf,
//     text or OpenMetrics.
//   - relabel.go: the one place that applies metric_relabel_configs to a
//     series' labels; fastpath.go applies the rule sets that need no labels
//     to a series' text.
//   - response.go: gzip and the writer that commits the status with the
//     first byte; aggregate.go: the aggregate endpoint, which merges text
//     by families (segment.go) and protobuf by frames (pbsegment.go) with
//     one k-way merge over pooled batches (merge.go).
package relay
