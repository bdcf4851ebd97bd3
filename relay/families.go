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

func (familyHandler) wantLabels([]byte) bool { return true }

func (f familyHandler) series(_ []byte, r relabeled, v float64, ts *int64, ex *exemplar.Exemplar) error {
	if !r.keep {
		return nil
	}
	f.p.samples++
	return f.p.assembler.sample(r.lset, v, ts, ex)
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
