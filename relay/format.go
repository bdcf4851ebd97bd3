package relay

import (
	"mime"
	"strconv"
	"strings"

	"github.com/prometheus/common/model"
)

// Format is an exposition format the relay reads or writes.
type Format int

// Formats, in Prometheus' order of preference.
const (
	FormatText Format = iota
	FormatOpenMetrics
	FormatProtobuf
)

// Content types written by the relay, exactly as Prometheus expects them,
// before the escaping parameter (see negotiate).
const (
	ContentTypeText        = "text/plain; version=0.0.4; charset=utf-8"
	ContentTypeOpenMetrics = "application/openmetrics-text; version=1.0.0; charset=utf-8"
	ContentTypeProtobuf    = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"
)

// ContentType returns the Content-Type of a format.
func (f Format) ContentType() string {
	switch f {
	case FormatOpenMetrics:
		return ContentTypeOpenMetrics
	case FormatProtobuf:
		return ContentTypeProtobuf
	}
	return ContentTypeText
}

// upstreamAccept is what we ask an exporter for when the scraper wants f:
// the same format first, so no conversion is needed, then the others. Names
// are asked for unescaped: the relay reads UTF-8 names and escapes them
// itself for a scraper that takes none.
func upstreamAccept(f Format) string {
	switch f {
	case FormatProtobuf:
		return ContentTypeProtobuf + ";escaping=allow-utf-8;q=1,application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.8,text/plain;version=0.0.4;escaping=allow-utf-8;q=0.5,*/*;q=0.1"
	case FormatOpenMetrics:
		return "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=1,text/plain;version=0.0.4;escaping=allow-utf-8;q=0.5,*/*;q=0.1"
	}
	return "text/plain;version=0.0.4;escaping=allow-utf-8;q=1,*/*;q=0.1"
}

// negotiated is what a scraper gets: the format, how names that are not
// classic ones are spelled, and the Content-Type that says both.
type negotiated struct {
	format      Format
	esc         model.EscapingScheme
	contentType string
}

// negotiate picks the output format from a scraper's Accept header, as
// prometheus/common/expfmt negotiates: the clause with the highest q among
// the formats we write (the first of equals), text when nothing matches.
// The clause's escaping parameter says how names that are not classic ones
// are written; without one they are escaped with underscores, except for
// text version 1.0.0, which Prometheus 3 asks for when it takes UTF-8
// names (as it adds escaping=allow-utf-8 to the other formats).
func negotiate(accept string) negotiated {
	best := negotiated{format: FormatText, esc: model.UnderscoreEscaping}
	textVersion, bestQ := "0.0.4", -1.0
	for _, part := range strings.Split(accept, ",") {
		mt, params, err := mime.ParseMediaType(strings.TrimSpace(part))
		if err != nil {
			continue
		}
		q := 1.0
		if s, ok := params["q"]; ok {
			if v, err := strconv.ParseFloat(s, 64); err == nil {
				q = v
			}
		}
		if q <= 0 || q <= bestQ {
			continue
		}
		c := negotiated{esc: model.UnderscoreEscaping}
		version := "0.0.4"
		switch v := params["version"]; {
		case mt == "application/vnd.google.protobuf" && params["proto"] == "io.prometheus.client.MetricFamily" && params["encoding"] == "delimited":
			c.format = FormatProtobuf
		case mt == "application/openmetrics-text" && (v == "" || v == "1.0.0" || v == "0.0.1"):
			c.format = FormatOpenMetrics
		case mt == "text/plain" && (v == "" || v == "0.0.4"):
			c.format = FormatText
		case mt == "text/plain" && v == "1.0.0":
			c.format, c.esc, version = FormatText, model.NoEscaping, v
		case mt == "*/*" || mt == "text/*":
			c.format = FormatText
		default:
			continue
		}
		if e, ok := params[model.EscapingKey]; ok {
			if scheme, err := model.ToEscapingScheme(e); err == nil {
				c.esc = scheme
			}
		}
		best, bestQ, textVersion = c, q, version
	}
	switch best.format {
	case FormatOpenMetrics:
		best.contentType = ContentTypeOpenMetrics
	case FormatProtobuf:
		best.contentType = ContentTypeProtobuf
	default:
		best.contentType = "text/plain; version=" + textVersion + "; charset=utf-8"
	}
	best.contentType += "; escaping=" + best.esc.String()
	return best
}

// parseContentType maps an upstream Content-Type to a format. An exporter
// that sends none is read as text, as Prometheus 2 did.
func parseContentType(ct string) (Format, string, bool) {
	if ct == "" {
		return FormatText, "text/plain", true
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil {
		return 0, "", false
	}
	switch mt {
	case "text/plain":
		return FormatText, ct, true
	case "application/openmetrics-text":
		if v := params["version"]; v != "" && v != "1.0.0" && v != "0.0.1" {
			return 0, "", false
		}
		return FormatOpenMetrics, ct, true
	case "application/vnd.google.protobuf":
		if params["proto"] != "io.prometheus.client.MetricFamily" {
			return 0, "", false
		}
		return FormatProtobuf, ct, true
	}
	return 0, "", false
}

// fallbackContentType maps a value of fallback_scrape_protocol, named as
// in Prometheus' scrape config, to the Content-Type it stands for.
func fallbackContentType(name string) (string, bool) {
	switch name {
	case "PrometheusText0.0.4":
		return "text/plain; version=0.0.4", true
	case "PrometheusText1.0.0":
		return "text/plain; version=1.0.0", true
	case "OpenMetricsText0.0.1":
		return "application/openmetrics-text; version=0.0.1", true
	case "OpenMetricsText1.0.0":
		return "application/openmetrics-text; version=1.0.0", true
	case "PrometheusProto":
		return ContentTypeProtobuf, true
	}
	return "", false
}

// upstreamFormat is parseContentType with the exporter's
// fallback_scrape_protocol for a Content-Type that is missing or unknown.
func upstreamFormat(ct, fallback string) (Format, string, bool) {
	if fallback != "" {
		if f, c, ok := parseContentType(ct); ok && ct != "" {
			return f, c, true
		}
		fct, _ := fallbackContentType(fallback) // validated by ParseConfig
		return parseContentType(fct)
	}
	return parseContentType(ct)
}
