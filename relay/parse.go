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
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/textparse"
)

// chunkBytes is the chunk size the text parsers are fed: large enough that
// setting up a parser costs nothing per sample, small enough to stay in
// the CPU caches.
const chunkBytes = 64 << 10

// metaKind tells the metadata entries apart.
type metaKind byte

const (
	metaHelp metaKind = iota
	metaType
	metaUnit
)

// handler receives what the parser finds in a chunk.
type handler interface {
	meta(kind metaKind, name, value []byte, typ model.MetricType) error
	// wantLabels decides per series whether its labels are built: that is
	// the most expensive part of relaying, and the direct path can do
	// without them for most series.
	wantLabels(raw []byte) bool
	// series gets the parser's text of a series and, when its labels
	// were wanted, what relabeling made of them.
	series(raw []byte, r relabeled, v float64, ts *int64, ex *exemplar.Exemplar) error
}

// relabeled is what relabeling made of a series whose labels were built.
type relabeled struct {
	built bool          // the labels were built and relabeled
	keep  bool          // the rules kept the series
	lset  labels.Labels // its labels after relabeling, when kept
	// label says lset is the series' labels without the exporter label,
	// which is still to be added (pipeline.wireLabel).
	label bool
}

// parse runs a parser over one chunk.
func (p *pipeline) parse(chunk []byte, ct string, om bool, h handler) error {
	if om {
		// Each chunk is parsed on its own; OpenMetrics requires the marker.
		p.omChunkBuf = append(append(p.omChunkBuf[:0], chunk...), "# EOF\n"...)
		chunk = p.omChunkBuf
	}
	parser, err := textparse.New(chunk, ct, p.symbols, textparse.ParserOptions{})
	if parser == nil {
		return fmt.Errorf("%w: %w", errParse, err)
	}
	for {
		entry, err := parser.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%w: %w", errParse, err)
		}
		switch entry {
		case textparse.EntryHelp:
			name, help := parser.Help()
			if !utf8.Valid(name) || !utf8.Valid(help) {
				return fmt.Errorf("%w: help of %q is not UTF-8", errParse, truncate(string(name)))
			}
			err = h.meta(metaHelp, name, help, "")
		case textparse.EntryType:
			name, typ := parser.Type()
			err = h.meta(metaType, name, nil, typ)
		case textparse.EntryUnit:
			name, unit := parser.Unit()
			err = h.meta(metaUnit, name, unit, "")
		case textparse.EntrySeries:
			raw, ts, v := parser.Series()
			// The parser takes {""} and names and values that are not
			// UTF-8; Prometheus fails the scrape for them, and the
			// protobuf output could not carry them.
			// The parser also takes blanks before the series.
			if r := bytes.TrimLeft(raw, " \t"); len(r) > 0 && r[0] == '{' && len(sampleName(r)) == 0 {
				return fmt.Errorf("%w: series without a metric name", errParse)
			}
			if !utf8.Valid(raw) {
				return fmt.Errorf("%w: series %q is not UTF-8", errParse, truncate(string(raw)))
			}
			var r relabeled
			if h.wantLabels(raw) {
				parser.Labels(&p.parsedLabels)
				// Both paths of the text formats relabel here.
				r.built = true
				if p.wireLabel && p.labelLater(p.parsedLabels) {
					r.lset, r.keep, r.label = p.parsedLabels, true, true
				} else if r.lset, r.keep, err = p.relabel(p.parsedLabels); err != nil {
					return err
				}
			}
			var ex *exemplar.Exemplar
			if om {
				p.parsedExemplar = exemplar.Exemplar{}
				if parser.Exemplar(&p.parsedExemplar) {
					ex = &p.parsedExemplar
				}
			}
			err = h.series(raw, r, v, ts, ex)
		case textparse.EntryHistogram:
			// Only the protobuf parser yields these, and protobuf input
			// does not come this way.
			err = fmt.Errorf("%w: unexpected native histogram in text input", errParse)
		}
		if err != nil {
			return err
		}
	}
}

// typeName spells a type for the output format: text 0.0.4 calls the
// unknown type "untyped", OpenMetrics "unknown".
func typeName(t model.MetricType, om bool) string {
	if t == model.MetricTypeUnknown || t == "untyped" {
		if om {
			return "unknown"
		}
		return "untyped"
	}
	return string(t)
}
