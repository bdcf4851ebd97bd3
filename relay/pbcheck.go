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
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/encoding/protowire"
)

// validateMetric refuses what would make the encoders write something
// Prometheus refuses or reads differently: every metric carries the value
// of its family's type; label names are set, unique, UTF-8 and neither
// __name__ nor the le or quantile of the series the metric stands for;
// label values and exemplar labels are UTF-8 and, for the text formats,
// without NUL bytes (see validString).
func validateMetric(typ dto.MetricType, m *dto.Metric, text bool) error {
	magic := ""
	switch typ {
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		magic = model.BucketLabel
	case dto.MetricType_SUMMARY:
		magic = model.QuantileLabel
	}
	for _, l := range m.Label {
		name := l.GetName()
		switch {
		case name == "" || !validString(name, text) || !validString(l.GetValue(), text):
			return errors.New("label without a valid name or with a value that is not UTF-8 or has a NUL byte")
		case name == model.MetricNameLabel:
			return errors.New("metric with a __name__ label")
		case name == magic:
			return fmt.Errorf("%s metric with a label %q", strings.ToLower(typ.String()), magic)
		}
	}
	if dup := duplicateName(m.Label); dup != "" {
		return fmt.Errorf("metric with label %q repeated", truncate(dup))
	}
	var ok bool
	switch typ {
	case dto.MetricType_COUNTER:
		ok = m.Counter != nil && validExemplar(m.Counter.Exemplar, text)
	case dto.MetricType_GAUGE:
		ok = m.Gauge != nil
	case dto.MetricType_SUMMARY:
		ok = m.Summary != nil
	case dto.MetricType_UNTYPED:
		ok = m.Untyped != nil
	case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
		ok = m.Histogram != nil
		for _, b := range m.Histogram.GetBucket() {
			ok = ok && validExemplar(b.Exemplar, text)
		}
		for _, e := range m.Histogram.GetExemplars() {
			ok = ok && validExemplar(e, text)
		}
		if ok && isNative(m.Histogram) {
			if err := validateSpans(m.Histogram); err != nil {
				return err
			}
		}
	}
	if !ok {
		return fmt.Errorf("metric without a %s value or with an invalid exemplar", typ)
	}
	return nil
}

// validateSpans checks that the spans of a native histogram describe as
// many buckets as it has (deltas, or counts for a float histogram), which
// Prometheus' parser insists on.
func validateSpans(h *dto.Histogram) error {
	float := h.GetSampleCountFloat() > 0 || h.GetZeroCountFloat() > 0 || len(h.PositiveCount) > 0 || len(h.NegativeCount) > 0
	sides := []struct {
		name    string
		spans   []*dto.BucketSpan
		buckets int
	}{
		{"positive", h.PositiveSpan, len(h.PositiveDelta)},
		{"negative", h.NegativeSpan, len(h.NegativeDelta)},
	}
	if float {
		sides[0].buckets, sides[1].buckets = len(h.PositiveCount), len(h.NegativeCount)
	}
	for _, side := range sides {
		n := 0
		for _, s := range side.spans {
			n += int(s.GetLength())
		}
		if n != side.buckets {
			return fmt.Errorf("native histogram whose %s spans cover %d buckets, not its %d", side.name, n, side.buckets)
		}
	}
	return nil
}

func validExemplar(e *dto.Exemplar, text bool) bool {
	if e == nil {
		return true
	}
	for _, l := range e.Label {
		if l.GetName() == "" || !validString(l.GetName(), text) || !validString(l.GetValue(), text) {
			return false
		}
	}
	return duplicateName(e.Label) == ""
}

// validString reports whether s is UTF-8 and, when it goes into a text
// format, free of NUL bytes: Prometheus' text parsers stop at one even in a
// quoted string, so no escaping could carry it.
func validString(s string, text bool) bool {
	return utf8.ValidString(s) && (!text || strings.IndexByte(s, 0) < 0)
}

// duplicateName returns a label name that occurs twice, "" if none does.
func duplicateName(pairs []*dto.LabelPair) string {
	if len(pairs) <= 16 {
		for i := 1; i < len(pairs); i++ {
			for j := 0; j < i; j++ {
				if pairs[i].GetName() == pairs[j].GetName() {
					return pairs[i].GetName()
				}
			}
		}
		return ""
	}
	seen := make(map[string]struct{}, len(pairs))
	for _, l := range pairs {
		if _, ok := seen[l.GetName()]; ok {
			return l.GetName()
		}
		seen[l.GetName()] = struct{}{}
	}
	return ""
}

// msgKind is a message type of client_model, for decodedSize.
type msgKind int

const (
	msgOther msgKind = iota
	msgMetric
	msgCounter
	msgSummary
	msgHistogram
	msgBucket
	msgExemplar
)

// Heap bytes proto.Unmarshal spends on a message beyond its wire bytes,
// rounded up from the sizes of the Go structs with their pointer fields
// and slice slots.
const (
	sizeMessage = 96 // a message struct, its pointer and allocation rounding
	sizeField   = 16 // a pointer to a scalar, or a slice slot
	sizePacked  = 8  // per byte of a packed repeated field (an int64 per varint byte at most)
	sizeString  = 24 // a string's header and the pointer to it
)

// decodedSize estimates the memory proto.Unmarshal takes for message b of
// kind k, from its wire encoding, without decoding it: the wire bytes
// (strings and unknown fields are copied) plus the cost of every message,
// field and slice element. It is an upper estimate for client_model
// messages and bounds hostile ones: each field costs at least its tag byte.
// Only known message fields are walked into, so the recursion is as deep as
// client_model's messages nest (four).
func decodedSize(b []byte, k msgKind) (int, error) {
	size := sizeMessage + len(b)
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0, protowire.ParseError(n)
		}
		field := b[:n]
		b = b[n:]
		if typ != protowire.BytesType {
			size += sizeField
			continue
		}
		v, _ := protowire.ConsumeBytes(field)
		child := childKind(k, num)
		if child < 0 {
			// A string, a packed repeated scalar or an unknown field.
			size += sizeString + sizePacked*len(v)
			continue
		}
		c, err := decodedSize(v, child)
		if err != nil {
			return 0, err
		}
		size += sizeField + c
	}
	return size, nil
}

// childKind is the kind of message field num of a k holds, -1 for a field
// that is not a message.
func childKind(k msgKind, num protowire.Number) msgKind {
	switch k {
	case msgMetric:
		switch num {
		case 1, 2, 5: // label, gauge, untyped
			return msgOther
		case 3:
			return msgCounter
		case 4:
			return msgSummary
		case 7:
			return msgHistogram
		}
	case msgCounter:
		switch num {
		case 2:
			return msgExemplar
		case 3:
			return msgOther // created timestamp
		}
	case msgSummary:
		if num == 3 || num == 4 { // quantile, created timestamp
			return msgOther
		}
	case msgHistogram:
		switch num {
		case 3:
			return msgBucket
		case 9, 12, 15: // spans, created timestamp
			return msgOther
		case 16:
			return msgExemplar
		}
	case msgBucket:
		if num == 3 {
			return msgExemplar
		}
	case msgExemplar:
		if num == 1 || num == 3 { // label, timestamp
			return msgOther
		}
	}
	return -1
}
