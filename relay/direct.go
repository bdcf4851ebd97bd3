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
	"io"
	"strings"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
)

// directHandler writes each sample straight from the parser: text to text
// or OpenMetrics to OpenMetrics, the fast path.
type directHandler struct {
	p  *pipeline
	om bool
	// labelInChunk says the exporter label's name is somewhere in the
	// chunk at hand: when it is not, no series of the chunk can have it.
	labelInChunk bool
}

func (d *directHandler) meta(kind metaKind, name, value []byte, typ model.MetricType) error {
	p := d.p
	if p.skipReplayedMeta > 0 {
		p.skipReplayedMeta--
		return nil
	}
	var typString string
	start := len(p.directBuf)
	switch kind {
	case metaHelp:
		p.directBuf = appendHelp(p.directBuf, name, value, d.om, p.escaping)
	case metaType:
		typString = typeName(typ, d.om)
		p.directBuf = appendMetaLine(p.directBuf, "TYPE", name, typString, p.escaping)
	case metaUnit:
		if !d.om {
			return nil
		}
		p.directBuf = appendMetaLine(p.directBuf, "UNIT", name, string(value), p.escaping)
	}
	if p.marking {
		m := lineMark{end: len(p.directBuf), meta: true}
		if kind == metaType {
			m.typ = markType(typString)
		}
		// The name was written as it is unless it was quoted or escaped:
		// a comparison tells that sooner than isLegacyName.
		if at := start + metaPrefix; at+len(name) < len(p.directBuf) && p.directBuf[at+len(name)] == ' ' && string(p.directBuf[at:at+len(name)]) == string(name) {
			m.nameLen = int32(len(name))
		}
		p.marks = append(p.marks, m)
	}
	return nil
}

// containsRare reports whether b contains s, whose byte rare is the one
// least likely in b: it stops only at that byte, where bytes.Contains
// stops at every byte s starts with, which in an exposition is often a
// common letter.
func containsRare(b []byte, s string, rare byte) bool {
	at := strings.IndexByte(s, rare)
	if at < 0 {
		return bytes.Contains(b, []byte(s))
	}
	for i := at; i < len(b); {
		j := bytes.IndexByte(b[i:], rare)
		if j < 0 {
			return false
		}
		i += j
		if start := i - at; start+len(s) <= len(b) && string(b[start:start+len(s)]) == s {
			return true
		}
		i++
	}
	return false
}

// mark records the sample line just written, for a markedWriter.
func (p *pipeline) mark() {
	if p.marking {
		p.marks = append(p.marks, lineMark{end: len(p.directBuf)})
	}
}

// wantLabels sends a series through relabeling with its labels built
// when there are rules that need them (see fastRules), when its text
// mentions the exporter label's name, which may then be taken already (see
// relabel), and when it has quoted names that the scraper needs escaped.
// Everything else takes the parser's text of the series, with the exporter
// label and the rules' constant labels appended.
//
// A series that needs its labels is looked up in the series cache first:
// when its outcome is remembered, its labels are not built.
func (d *directHandler) wantLabels(raw []byte) bool {
	p := d.p
	p.cached = nil
	if !d.needsLabels(raw) {
		return false
	}
	if p.cache != nil {
		p.cached = p.cache.lookup(raw, p.escaping, d.om)
		return p.cached == nil
	}
	return true
}

func (d *directHandler) needsLabels(raw []byte) bool {
	p := d.p
	escape := p.escaping != model.NoEscaping
	if len(p.relabels) > 0 {
		if escape && hasQuotedName(raw) {
			return true
		}
		return p.fastRules == nil || !p.fastRules.handles(raw)
	}
	if !escape {
		// Most series do not mention the label at all, which a search
		// tells faster than a walk over the names, and a search for the
		// label's rarest byte faster still: bytes.Contains stops at
		// every byte the label starts with. Most chunks do not mention
		// it either (one search of the chunk, see direct), and then no
		// series is searched.
		if !d.labelInChunk || !containsRare(raw, p.label, p.labelRare) {
			return false
		}
		_, named := scanNames(raw, p.label)
		return named
	}
	// One walk over the label names for both questions.
	quoted, named := scanNames(raw, p.label)
	return quoted || named
}

func (d *directHandler) series(raw []byte, r relabeled, v float64, ts *int64, ex *exemplar.Exemplar) error {
	p := d.p
	if c := p.cached; c != nil {
		p.cached = nil
		if c.dropped {
			return nil
		}
		p.samples++
		p.directBuf = appendValueSuffix(append(p.directBuf, c.series()...), v, ts, ex, d.om, p.escaping)
		p.mark()
		return nil
	}
	if !r.built {
		if p.fastRules != nil && !p.fastRules.keep(raw) {
			return nil
		}
		p.samples++
		p.directBuf = appendRawSample(p.directBuf, raw, p.splice, v, ts, ex, d.om, p.escaping)
		p.mark()
		return nil
	}
	if !r.keep {
		if p.cache != nil {
			p.cache.remember(true, nil)
		}
		return nil
	}
	p.samples++
	start := len(p.directBuf)
	p.directBuf = appendSeries(p.directBuf, r.lset, p.escaping)
	if p.cache != nil {
		p.cache.remember(false, p.directBuf[start:])
	}
	p.directBuf = appendValueSuffix(p.directBuf, v, ts, ex, d.om, p.escaping)
	p.mark()
	return nil
}

// direct relays text to text or OpenMetrics to OpenMetrics.
func (p *pipeline) direct(body io.Reader, ct string, om bool, w io.Writer) error {
	// Text chunks may end anywhere between lines: the text parser needs no
	// family context. OpenMetrics chunks end at family boundaries, since
	// its parser checks samples against their family's type.
	p.chunks.reset(body, p.maxLine, p.maxMetric, chunkBytes, om, om)
	h := &directHandler{p: p, om: om}
	// A writer that takes the lines marked (the aggregate endpoint's
	// segmenter) is told where each line ends and which are metadata, so
	// that it does not read them again, and lends its buffer: the output
	// is written where it keeps it. directBuf is then that buffer, which
	// the pipeline must not keep.
	mw, marking := w.(markedWriter)
	p.marking = marking
	own := p.directBuf
	defer func() { p.marking, p.marks, p.directBuf = false, p.marks[:0], own[:0] }()
	for {
		chunk, replayed, err := p.chunks.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		p.directBuf, p.marks = own[:0], p.marks[:0]
		if marking {
			p.directBuf = mw.markedBuffer()
		}
		from := len(p.directBuf)
		// The parser's series are bytes of the chunk, and a name is
		// spelt as it is in them, quoted or not (unquoting only undoes
		// \\, \" and \n): where the chunk lacks the label's name, so
		// do they.
		h.labelInChunk = p.label != "" && containsRare(chunk, p.label, p.labelRare)
		p.skipReplayedMeta = replayed
		if err := p.parse(chunk, ct, om, h); err != nil {
			return err
		}
		if len(p.directBuf) == from {
			continue
		}
		if marking {
			err = mw.writeMarked(p.directBuf, from, p.marks)
		} else {
			own = p.directBuf
			_, err = w.Write(p.directBuf)
		}
		if err != nil {
			return err
		}
	}
	if om {
		if _, err := io.WriteString(w, "# EOF\n"); err != nil {
			return err
		}
	}
	return nil
}
