// Package relay is the agent's streaming relabeling proxy. It scrapes the
// local exporters listed in its configuration, parses their output family by
// family with Prometheus' own parsers, relabels every series with
// Prometheus' relabel package (so metric_relabel_configs behave exactly as
// in prometheus.yml), and writes the result in the format the scraper
// negotiated. Memory is bounded by one metric family, not by the payload.
package relay
