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
func appendHelp(b []byte, name, help []byte, om bool) []byte {
	b = append(b, "# HELP "...)
	b = appendMetricNameToken(b, name)
	b = append(b, ' ')
	if !bytes.ContainsAny(help, "\\\n\"") {
		b = append(b, help...)
		return append(b, '\n')
	}
	for _, c := range help {
		switch c {
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

func appendMetaLine(b []byte, kind string, name []byte, value string) []byte {
	b = append(b, "# "...)
	b = append(b, kind...)
	b = append(b, ' ')
	b = appendMetricNameToken(b, name)
	b = append(b, ' ')
	b = append(b, value...)
	return append(b, '\n')
}

// appendMetricNameToken writes a name as it appears in a comment line:
// bare when it is a classic name, quoted otherwise.
func appendMetricNameToken(b []byte, name []byte) []byte {
	if isLegacyName(name, true) {
		return append(b, name...)
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
// name moves inside the braces, quoted, as Prometheus 3 writes it.
func appendSeries(b []byte, lset labels.Labels) []byte {
	name := lset.Get(model.MetricNameLabel)
	legacy := isLegacyName(name, true)
	first := true
	if legacy {
		b = append(b, name...)
	} else {
		b = append(b, '{')
		b = appendQuoted(b, name)
		first = false
	}
	lset.Range(func(l labels.Label) {
		if l.Name == model.MetricNameLabel {
			return
		}
		if first {
			b = append(b, '{')
			first = false
		} else {
			b = append(b, ',')
		}
		if isLegacyName(l.Name, false) {
			b = append(b, l.Name...)
		} else {
			b = appendQuoted(b, l.Name)
		}
		b = append(b, '=')
		b = appendQuoted(b, l.Value)
	})
	if !first {
		b = append(b, '}')
	}
	return b
}

// appendQuoted writes a double-quoted label value with the exposition
// formats' escapes: backslash, double quote and newline.
func appendQuoted(b []byte, s string) []byte {
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
// adding label=value: the series text was validated by the parser, and
// label order does not matter in the exposition formats.
func appendRawSample(b, raw []byte, label, value string, v float64, ts *int64, ex *exemplar.Exemplar, om bool) []byte {
	switch {
	case label == "":
		b = append(b, raw...)
	case len(raw) > 0 && raw[len(raw)-1] == '}':
		body := raw[:len(raw)-1]
		b = append(b, body...)
		if t := trimSpaceRight(body); len(t) > 0 && t[len(t)-1] != '{' && t[len(t)-1] != ',' {
			b = append(b, ',')
		}
		b = append(b, label...)
		b = append(b, '=')
		b = appendQuoted(b, value)
		b = append(b, '}')
	default:
		b = append(b, raw...)
		b = append(b, '{')
		b = append(b, label...)
		b = append(b, '=')
		b = appendQuoted(b, value)
		b = append(b, '}')
	}
	return appendValueSuffix(b, v, ts, ex, om)
}

func trimSpaceRight(b []byte) []byte {
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// appendSample writes one sample line.
func appendSample(b []byte, lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar, om bool) []byte {
	b = appendSeries(b, lset)
	return appendValueSuffix(b, v, ts, ex, om)
}

// appendValueSuffix writes " value [timestamp] [# exemplar]\n".
func appendValueSuffix(b []byte, v float64, ts *int64, ex *exemplar.Exemplar, om bool) []byte {
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
	if om && ex != nil {
		b = append(b, " # {"...)
		first := true
		ex.Labels.Range(func(l labels.Label) {
			if !first {
				b = append(b, ',')
			}
			first = false
			if isLegacyName(l.Name, false) {
				b = append(b, l.Name...)
			} else {
				b = appendQuoted(b, l.Name)
			}
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
