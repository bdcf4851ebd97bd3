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
	"strings"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/relabel"
	"google.golang.org/protobuf/proto"
)

// fastRules is a list of metric_relabel_configs that the direct path can
// apply to the parser's text of a series without building its labels, the
// most expensive part of relaying: rules that set a constant label, and
// keep or drop rules that look at the metric name alone. That is the shape
// of most rule sets (examples/relay.yml), and building labels for them
// would halve the relay's throughput.
//
// The result is exactly relabel.ProcessBuilder's: name rules see only
// __name__, which the constant rules never write, so their order among each
// other does not matter; a series whose text mentions a constant label's
// name (it may have that label already), or spells a name quoted, goes the
// general way.
type fastRules struct {
	names []*relabel.Config // keep and drop rules on __name__, in order
	set   [][]byte          // names of the constant labels and the exporter label
	extra []byte            // the constant labels, name="value",...
	pairs []*dto.LabelPair  // the constant labels, for protobuf metrics
	// decided caches the verdict of the name rules per metric name, and
	// last the latest: series of one metric come together. The map is
	// cleared when it grows.
	decided  map[string]bool
	last     []byte
	lastKeep bool
}

// maxDecided bounds fastRules.decided.
const maxDecided = 4096

// newFastRules returns the fast form of rules, nil if any rule needs the
// labels of a series. label is the exporter label the pipeline adds before
// the rules, "" for none.
func newFastRules(rules []*relabel.Config, label string) *fastRules {
	f := &fastRules{decided: make(map[string]bool)}
	values := map[string]string{}
	var order []string
	for _, rc := range rules {
		switch {
		case (rc.Action == relabel.Keep || rc.Action == relabel.Drop) &&
			len(rc.SourceLabels) == 1 && rc.SourceLabels[0] == model.MetricNameLabel:
			f.names = append(f.names, rc)
		case constantLabel(rc, label):
			if _, ok := values[rc.TargetLabel]; !ok {
				order = append(order, rc.TargetLabel)
			}
			values[rc.TargetLabel] = rc.Replacement
		default:
			return nil
		}
	}
	for _, name := range order {
		if len(f.extra) > 0 {
			f.extra = append(f.extra, ',')
		}
		f.extra = appendQuoted(append(append(f.extra, name...), '='), values[name])
		f.set = append(f.set, []byte(name))
		f.pairs = append(f.pairs, &dto.LabelPair{Name: proto.String(name), Value: proto.String(values[name])})
	}
	if label != "" {
		f.set = append(f.set, []byte(label))
	}
	return f
}

// constantLabel reports whether a rule sets one label to one value for
// every series: a replace without source labels (its regex sees "") with
// the default regex and no $ references, which relabel applies as a plain
// Set. An empty replacement would delete the label instead.
func constantLabel(rc *relabel.Config, label string) bool {
	return rc.Action == relabel.Replace && len(rc.SourceLabels) == 0 &&
		rc.Regex.String() == relabel.DefaultRelabelConfig.Regex.String() &&
		!strings.Contains(rc.TargetLabel, "$") && !strings.Contains(rc.Replacement, "$") &&
		rc.TargetLabel != model.MetricNameLabel && rc.TargetLabel != label && rc.TargetLabel != "" &&
		rc.Replacement != "" && utf8.ValidString(rc.Replacement) &&
		isLegacyName(rc.TargetLabel, false)
}

// handles reports whether the series can take the fast path: its name is
// a classic one and its text mentions no label the rules or the exporter
// label set.
func (f *fastRules) handles(raw []byte) bool {
	if len(raw) == 0 || raw[0] == '{' {
		return false
	}
	for _, name := range f.set {
		if bytes.Contains(raw, name) {
			return false
		}
	}
	return true
}

// keep applies the name rules to the name a series' text begins with.
func (f *fastRules) keep(raw []byte) bool {
	if len(f.names) == 0 {
		return true
	}
	return f.keepName(sampleName(raw))
}

// keepName applies the name rules to a metric name.
func (f *fastRules) keepName(name []byte) bool {
	if len(f.names) == 0 {
		return true
	}
	if f.last != nil && bytes.Equal(name, f.last) {
		return f.lastKeep
	}
	keep, ok := f.decided[string(name)]
	if !ok {
		keep = f.decide(name)
	}
	f.last, f.lastKeep = append(f.last[:0], name...), keep
	return keep
}

func (f *fastRules) decide(name []byte) bool {
	keep := true
	for _, rc := range f.names {
		if rc.Regex.MatchString(string(name)) != (rc.Action == relabel.Keep) {
			keep = false
			break
		}
	}
	if len(f.decided) >= maxDecided {
		clear(f.decided)
	}
	f.decided[string(name)] = keep
	return keep
}
