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
//   - families.go, dto.go, protobuf.go, encode.go: conversions and protobuf
//     input, through metric families.
//   - relabel.go: the one place that applies metric_relabel_configs to a
//     series' labels; fastpath.go applies the rule sets that need no labels
//     to a series' text.
//   - response.go: gzip and the writer that commits the status with the
//     first byte; aggregate.go: the aggregate endpoint.
package relay
