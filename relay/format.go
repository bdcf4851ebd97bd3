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

package relay

import (
	"mime"
	"slices"
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

// upstreamMediaType is the media range that asks an exporter for f with
// unescaped names.
func upstreamMediaType(f Format) string {
	switch f {
	case FormatProtobuf:
		return "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;escaping=allow-utf-8"
	case FormatOpenMetrics:
		return "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8"
	}
	return "text/plain;version=0.0.4;escaping=allow-utf-8"
}

// negotiated is what a scraper gets: the format, how names that are not
// classic ones are spelled, and the Content-Type that says both.
type negotiated struct {
	format      Format
	esc         model.EscapingScheme
	contentType string
}

// defaultNegotiated is the answer to a scraper whose Accept header names no
// format the relay writes: text 0.0.4 with escaped names, as expfmt answers.
var defaultNegotiated = negotiated{format: FormatText, esc: model.UnderscoreEscaping, contentType: "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"}

// acceptable is the formats a scraper's Accept header takes, best first.
type acceptable []negotiated

// best is the scraper's preferred format, as prometheus/common/expfmt
// negotiates: the clause with the highest q among the formats we write
// (the first of equals), text when nothing matches.
func (a acceptable) best() negotiated {
	if len(a) == 0 {
		return defaultNegotiated
	}
	return a[0]
}

// answer is the format to relay an upstream body of format in to this
// scraper: in itself when the scraper takes it at all (q > 0), with the
// escaping and text version of the scraper's best clause for it, so the
// body needs no conversion; the scraper's best format otherwise. This is
// the relay's negotiation rule: convert only when the scraper cannot read
// what the exporter sent.
func (a acceptable) answer(in Format) negotiated {
	for _, c := range a {
		if c.format == in {
			return c
		}
	}
	return a.best()
}

// upstreamAccept is the Accept header that asks an exporter for the
// scraper's formats in the scraper's order, so that the exporter's answer
// can be relayed without conversion whenever the exporter writes one of
// them. Names are asked for unescaped (see upstreamMediaType).
func (a acceptable) upstreamAccept() string {
	if len(a) == 0 {
		return upstreamMediaType(FormatText) + ";q=1,*/*;q=0.1"
	}
	var b strings.Builder
	var seen [FormatProtobuf + 1]bool
	q := 10
	for _, c := range a {
		if seen[c.format] {
			continue
		}
		seen[c.format] = true
		b.WriteString(upstreamMediaType(c.format))
		if q == 10 {
			b.WriteString(";q=1,")
		} else {
			b.WriteString(";q=0." + strconv.Itoa(q) + ",")
		}
		q--
	}
	b.WriteString("*/*;q=0.1")
	return b.String()
}

// parseAccept returns the clauses of an Accept header that name a format
// the relay writes, by descending q (the first of equals first). A clause's
// escaping parameter says how names that are not classic ones are written;
// without one they are escaped with underscores, except for text version
// 1.0.0, which Prometheus 3 asks for when it takes UTF-8 names (as it adds
// escaping=allow-utf-8 to the other formats).
func parseAccept(accept string) acceptable {
	var out acceptable
	var qs []float64
	for part := range strings.SplitSeq(accept, ",") {
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
		if !(q > 0) {
			continue
		}
		c := negotiated{esc: model.UnderscoreEscaping}
		textVersion := "0.0.4"
		switch v := params["version"]; {
		case mt == "application/vnd.google.protobuf" && params["proto"] == "io.prometheus.client.MetricFamily" && params["encoding"] == "delimited":
			c.format = FormatProtobuf
		case mt == "application/openmetrics-text" && (v == "" || v == "1.0.0" || v == "0.0.1"):
			c.format = FormatOpenMetrics
		case mt == "text/plain" && (v == "" || v == "0.0.4"):
			c.format = FormatText
		case mt == "text/plain" && v == "1.0.0":
			c.format, c.esc, textVersion = FormatText, model.NoEscaping, v
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
		switch c.format {
		case FormatOpenMetrics:
			c.contentType = ContentTypeOpenMetrics
		case FormatProtobuf:
			c.contentType = ContentTypeProtobuf
		default:
			c.contentType = "text/plain; version=" + textVersion + "; charset=utf-8"
		}
		c.contentType += "; escaping=" + c.esc.String()
		// Insertion keeps equal q in header order; headers are short.
		i := len(out)
		for i > 0 && qs[i-1] < q {
			i--
		}
		out = slices.Insert(out, i, c)
		qs = slices.Insert(qs, i, q)
	}
	return out
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
