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
	"bytes"
	"math"
	"strconv"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
)

// The text encoders append into a reused buffer. They write what the
// parser read, after relabeling, in the same format: text 0.0.4 to text
// 0.0.4, OpenMetrics to OpenMetrics. Conversions between formats go through
// the dto path instead (dto.go), where family semantics are explicit.

// appendHelp appends a # HELP line. Text 0.0.4 escapes backslash and
// newline in help; OpenMetrics also escapes the double quote.
func appendHelp[S string | []byte](b []byte, name, help S, om bool, esc model.EscapingScheme) []byte {
	b = append(b, "# HELP "...)
	b = appendMetricNameToken(b, name, esc)
	b = append(b, ' ')
	for i := 0; i < len(help); i++ {
		switch c := help[i]; c {
		case '\\':
			b = append(b, `\\`...)
		case '\n':
			b = append(b, `\n`...)
		case '"':
			if om {
				b = append(b, `\"`...)
			} else {
				b = append(b, c)
			}
		default:
			b = append(b, c)
		}
	}
	return append(b, '\n')
}

func appendMetaLine[S string | []byte](b []byte, kind string, name S, value string, esc model.EscapingScheme) []byte {
	b = append(b, "# "...)
	b = append(b, kind...)
	b = append(b, ' ')
	b = appendMetricNameToken(b, name, esc)
	b = append(b, ' ')
	b = append(b, value...)
	return append(b, '\n')
}

// appendMetricNameToken writes a name as it appears in a comment line:
// bare when it is a classic name, escaped for a scraper that takes no UTF-8
// names, quoted otherwise.
func appendMetricNameToken[S string | []byte](b []byte, name S, esc model.EscapingScheme) []byte {
	if isLegacyName(name, true) {
		return append(b, name...)
	}
	if esc != model.NoEscaping && len(name) > 0 {
		return append(b, escapeMetricName(string(name), esc)...)
	}
	return appendQuoted(b, string(name))
}

// isLegacyName reports whether name is a classic metric name
// ([a-zA-Z_:][a-zA-Z0-9_:]*) or, without colons, a classic label name:
// those are written bare, anything else quoted.
func isLegacyName[S string | []byte](name S, metric bool) bool {
	if len(name) == 0 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		legacy := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' ||
			c >= '0' && c <= '9' && i > 0 || c == ':' && metric
		if !legacy {
			return false
		}
	}
	return true
}

// appendSeries writes name{labels}. A name that is not a classic metric
// name moves inside the braces, quoted, as Prometheus 3 writes it, unless
// the scraper takes no UTF-8 names: then names are escaped.
func appendSeries(b []byte, lset labels.Labels, esc model.EscapingScheme) []byte {
	b, open := appendSeriesName(b, lset.Get(model.MetricNameLabel), "", esc)
	lset.Range(func(l labels.Label) {
		if l.Name != model.MetricNameLabel {
			b, open = appendLabel(b, open, l.Name, l.Value, esc)
		}
	})
	if open {
		b = append(b, '}')
	}
	return b
}

// appendQuoted writes a double-quoted label value with the exposition
// formats' escapes: backslash, double quote and newline.
func appendQuoted[S string | []byte](b []byte, s S) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		var esc string
		switch s[i] {
		case '\\':
			esc = `\\`
		case '"':
			esc = `\"`
		case '\n':
			esc = `\n`
		default:
			continue
		}
		b = append(b, s[start:i]...)
		b = append(b, esc...)
		start = i + 1
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// appendFloat writes a sample value exactly, in its shortest form:
// integers (most sample values) as digits, which is much faster than
// general float formatting, anything else as Go's shortest round-trip
// representation; +Inf, -Inf and NaN spelled out as Prometheus does.
func appendFloat(b []byte, v float64) []byte {
	if v == math.Trunc(v) && v > -1e15 && v < 1e15 && (v != 0 || !math.Signbit(v)) {
		return strconv.AppendInt(b, int64(v), 10)
	}
	switch {
	case math.IsNaN(v):
		return append(b, "NaN"...)
	case math.IsInf(v, 1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}

// appendOMTimestamp writes milliseconds as exact decimal seconds.
func appendOMTimestamp(b []byte, ms int64) []byte {
	if ms < 0 {
		b = append(b, '-')
		ms = -ms
	}
	b = strconv.AppendInt(b, ms/1000, 10)
	if frac := ms % 1000; frac != 0 {
		b = append(b, '.')
		b = append(b, byte('0'+frac/100), byte('0'+frac/10%10), byte('0'+frac%10))
	}
	return b
}

// appendRawSample writes a sample from the parser's text of its series,
// adding the labels in extra (name="value" pairs, comma-separated, already
// spelled): the series text was validated by the parser, and label order
// does not matter in the exposition formats.
func appendRawSample(b, raw, extra []byte, v float64, ts *int64, ex *exemplar.Exemplar, om bool, esc model.EscapingScheme) []byte {
	switch {
	case len(extra) == 0:
		b = append(b, raw...)
	case len(raw) > 0 && raw[len(raw)-1] == '}':
		body := raw[:len(raw)-1]
		b = append(b, body...)
		if t := trimSpaceRight(body); len(t) > 0 && t[len(t)-1] != '{' && t[len(t)-1] != ',' {
			b = append(b, ',')
		}
		b = append(b, extra...)
		b = append(b, '}')
	default:
		b = append(b, raw...)
		b = append(b, '{')
		b = append(b, extra...)
		b = append(b, '}')
	}
	return appendValueSuffix(b, v, ts, ex, om, esc)
}

// hasQuotedName reports whether the parser's text of a series spells its
// metric name or a label name quoted, which a scraper that takes no UTF-8
// names must get escaped.
func hasQuotedName(raw []byte) bool {
	quoted, _ := scanNames(raw, "")
	return quoted
}

// scanNames walks the label names in the parser's text of a series, once
// for both questions the fast path asks of it: whether a name is quoted
// (see hasQuotedName), and whether a label is named label, which must then
// be relabeled (named). Label values are skipped with their escapes. The
// parser takes labels without commas between them (a{a=""b=""}), so a
// name may start right after a value. Where the walk is unsure, at a
// quoted name (whose escapes would have to be undone to compare it), a NUL
// byte (which the parser's lexer takes for the end) or a byte no name or
// separator starts with, it reports both, and the labels are built:
// always right, only slower.
func scanNames(raw []byte, label string) (quoted, named bool) {
	i := bytes.IndexByte(raw, '{')
	if i < 0 {
		return false, false
	}
	if bytes.IndexByte(raw, 0) >= 0 {
		return true, label != ""
	}
	for i++; i < len(raw); {
		switch c := raw[i]; {
		case c == ' ' || c == '\t' || c == ',':
			i++
			continue
		case c == '}':
			return false, named
		case !isNameStart(c):
			return true, label != ""
		}
		start := i
		for i < len(raw) && (isNameStart(raw[i]) || raw[i] >= '0' && raw[i] <= '9') {
			i++
		}
		if label != "" && string(raw[start:i]) == label {
			named = true
		}
		for i < len(raw) && (raw[i] == ' ' || raw[i] == '\t') {
			i++
		}
		if i >= len(raw) || raw[i] != '=' {
			return true, label != ""
		}
		i++
		for i < len(raw) && (raw[i] == ' ' || raw[i] == '\t') {
			i++
		}
		if i >= len(raw) || raw[i] != '"' {
			return true, label != ""
		}
		// Skip the value: the quote that ends it is the first one not
		// escaped by an odd number of backslashes.
		for i++; ; {
			k := bytes.IndexByte(raw[i:], '"')
			if k < 0 {
				return true, label != ""
			}
			i += k
			escaped := false
			for j := i - 1; raw[j] == '\\'; j-- {
				escaped = !escaped
			}
			i++
			if !escaped {
				break
			}
		}
	}
	return false, named
}

// isNameStart reports whether c may start an unquoted label name.
func isNameStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == ':'
}

func trimSpaceRight(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// appendValueSuffix writes " value [timestamp] [# exemplar]\n".
func appendValueSuffix(b []byte, v float64, ts *int64, ex *exemplar.Exemplar, om bool, esc model.EscapingScheme) []byte {
	b = appendValueTimestamp(b, v, ts, om)
	if om && ex != nil {
		b = append(b, " # {"...)
		first := true
		ex.Labels.Range(func(l labels.Label) {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = appendLabelName(b, l.Name, esc)
			b = append(b, '=')
			b = appendQuoted(b, l.Value)
		})
		b = append(b, "} "...)
		b = appendFloat(b, ex.Value)
		if ex.HasTs {
			b = append(b, ' ')
			b = appendOMTimestamp(b, ex.Ts)
		}
	}
	return append(b, '\n')
}

// appendValueTimestamp writes " value [timestamp]", the timestamp in the
// format's unit: seconds in OpenMetrics, milliseconds in text 0.0.4.
func appendValueTimestamp(b []byte, v float64, ts *int64, om bool) []byte {
	b = append(b, ' ')
	b = appendFloat(b, v)
	if ts != nil {
		b = append(b, ' ')
		if om {
			b = appendOMTimestamp(b, *ts)
		} else {
			b = strconv.AppendInt(b, *ts, 10)
		}
	}
	return b
}
