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
	"fmt"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
)

// relabel is the one place where the relay applies metric_relabel_configs
// to the labels of a series. It has one caller per input format: parse for
// the series of text and OpenMetrics (the direct and the families path get
// its outcome; familyHandler.series calls it for a series parse left to
// the wire path that goes another way), relabelMetric for protobuf metrics
// and their series; the protobuf stream path and the series cache reuse
// outcomes from them (fastpath.go applies rules that need no labels to the
// text of a series instead). It adds the exporter label (aggregate endpoint
// only) and applies the rules in Prometheus' order: target labels first (an
// upstream label of the same name is kept as exported_<name>, as with
// honor_labels: false), then the rules.
func (p *pipeline) relabel(lset labels.Labels) (labels.Labels, bool, error) {
	p.relabelBuilder.Reset(lset)
	if p.label != "" {
		if v := lset.Get(p.label); v != "" {
			name := model.ExportedLabelPrefix + p.label
			for lset.Get(name) != "" {
				name = model.ExportedLabelPrefix + name
			}
			p.relabelBuilder.Set(name, v)
		}
		p.relabelBuilder.Set(p.label, p.exporter)
	}
	if len(p.relabels) == 0 {
		return p.relabelBuilder.Labels(), true, nil
	}
	if !relabel.ProcessBuilder(p.relabelBuilder, p.relabels...) {
		return labels.EmptyLabels(), false, nil
	}
	out := p.relabelBuilder.Labels()
	if out.Get(model.MetricNameLabel) == "" || !out.IsValid(p.scheme) {
		return out, false, fmt.Errorf("%w: %s", errRelabel, truncate(out.String()))
	}
	return out, true, nil
}

// labelLater reports whether relabel, without rules, makes of the labels
// lset only lset with the exporter label among them, so that the label can
// be written where the series is (pipeline.wireLabel): lset has no label of
// the exporter label's name, which relabel keeps as exported_<name>, and no
// empty value, which drops every label of its name (labels.Builder.Reset;
// the text parser takes a name twice).
func (p *pipeline) labelLater(lset labels.Labels) bool {
	later := true
	lset.Range(func(l labels.Label) {
		if l.Value == "" || l.Name == p.label {
			later = false
		}
	})
	return later
}
