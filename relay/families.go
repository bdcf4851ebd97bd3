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
	"io"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
)

// familyHandler feeds relabeled series to the assembler.
type familyHandler struct{ p *pipeline }

func (f familyHandler) meta(kind metaKind, name, value []byte, typ model.MetricType) error {
	return f.p.assembler.meta(kind, name, value, typ)
}

// wantLabels builds every series' labels, except where the series cache
// serves text written as protobuf: there a series whose outcome is
// remembered is written from its label fields (see series), when the
// rules dropped it or when it goes out as wire bytes (assembler.wires).
func (f familyHandler) wantLabels(raw []byte) bool {
	p := f.p
	p.cached, p.cacheMissed = nil, false
	if p.cache == nil || !p.assembler.wiring() {
		return true
	}
	e := p.cache.lookupWire(raw, p.escaping)
	if e == nil {
		p.cacheMissed = true
		return true
	}
	if !e.dropped {
		if name, _ := e.wireValue(); !p.assembler.wires(name) {
			return true
		}
	}
	p.cached = e
	return false
}

func (f familyHandler) series(_ []byte, r relabeled, v float64, ts *int64, ex *exemplar.Exemplar) error {
	p := f.p
	if e := p.cached; e != nil {
		p.cached = nil
		if e.dropped {
			return nil
		}
		p.samples++
		name, labelFields := e.wireValue()
		return p.assembler.sampleWire(name, labelFields, v, ts)
	}
	if !r.keep {
		if p.cacheMissed {
			p.cache.remember(true, nil)
		}
		return nil
	}
	p.samples++
	a := &p.assembler
	a.wireLabels = nil
	lset := r.lset
	if r.label {
		// The exporter label goes into the wire bytes of a series that
		// is written so; any other gets it among its labels.
		if a.wires(lset.Get(model.MetricNameLabel)) {
			a.withLabel = true
		} else {
			var err error
			if lset, _, err = p.relabel(lset); err != nil {
				return err
			}
		}
	}
	err := a.sample(lset, v, ts, ex)
	a.withLabel = false
	if err != nil {
		return err
	}
	// An outcome is remembered only when the rules kept the metric name:
	// the name decides the family, which the input's metadata gives.
	if p.cacheMissed && a.wireLabels != nil {
		if name := r.lset.Get(model.MetricNameLabel); name == p.parsedLabels.Get(model.MetricNameLabel) {
			p.cacheValue = appendWireValue(p.cacheValue[:0], name, a.wireLabels)
			p.cache.remember(false, p.cacheValue)
		}
	}
	return nil
}

// families reads body and calls emit with each relabeled family, in the
// order of the body. A family larger than a chunk comes in parts, one
// call each, with the same name. The family is only valid during the call.
func (p *pipeline) families(body io.Reader, in Format, ct string, out Format, emit func(*dto.MetricFamily) error) error {
	p.familyFormat = out
	if in == FormatProtobuf {
		p.stripCreated = out == FormatOpenMetrics
		return p.protobufFamilies(body, emit)
	}
	om := in == FormatOpenMetrics
	p.chunks.reset(body, p.maxLine, p.maxMetric, chunkBytes, true, om)
	p.assembler.reset(om, out == FormatProtobuf, emit)
	h := familyHandler{p}
	for {
		chunk, _, err := p.chunks.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := p.parse(chunk, ct, om, h); err != nil {
			return err
		}
		if err := p.assembler.flush(); err != nil {
			return err
		}
	}
}
