package relay

import (
	"mime"
	"strconv"
	"strings"
)

// Format is an exposition format the relay reads or writes.
type Format int

// Formats, in Prometheus' order of preference.
const (
	FormatText Format = iota
	FormatOpenMetrics
	FormatProtobuf
)

// Content types written by the relay, exactly as Prometheus expects them.
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
// the same format first, so no conversion is needed, then the others.
func upstreamAccept(f Format) string {
	switch f {
	case FormatProtobuf:
		return ContentTypeProtobuf + ";q=1,application/openmetrics-text;version=1.0.0;q=0.8,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
	case FormatOpenMetrics:
		return "application/openmetrics-text;version=1.0.0;q=1,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
	}
	return "text/plain;version=0.0.4;q=1,*/*;q=0.1"
}

// negotiate picks the output format from a scraper's Accept header: the
// highest q among the formats we write, text when nothing matches.
func negotiate(accept string) Format {
	best, bestQ := FormatText, -1.0
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
		if q <= 0 {
			continue
		}
		var f Format
		switch {
		case mt == "application/vnd.google.protobuf" && params["proto"] == "io.prometheus.client.MetricFamily" && params["encoding"] == "delimited":
			f = FormatProtobuf
		case mt == "application/openmetrics-text" && (params["version"] == "" || params["version"] == "1.0.0" || params["version"] == "0.0.1"):
			f = FormatOpenMetrics
		case mt == "text/plain" || mt == "*/*" || mt == "text/*":
			f = FormatText
		default:
			continue
		}
		if q > bestQ {
			best, bestQ = f, q
		}
	}
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
