package relay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	"github.com/klauspost/compress/gzip"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"github.com/prometheus/prometheus/model/textparse"
	"google.golang.org/protobuf/proto"
)

// chunkBytes is the chunk size the text parsers are fed: large enough that
// setting up a parser costs nothing per sample, small enough to stay in
// the CPU caches.
const chunkBytes = 64 << 10

var (
	// errParse wraps failures of the exposition parsers.
	errParse = errors.New("malformed upstream body")
	// errRelabel is a series that relabeling left without a metric name or
	// with invalid label names: Prometheus fails such a scrape, so does
	// the relay.
	errRelabel = errors.New("metric_relabel_configs produced an invalid series")
)

// pipeline relays one upstream body: parse, relabel each series, encode.
// Its buffers are reused across chunks and scrapes, so memory is bounded
// by the largest chunk or family, not by the body. A pipeline serves one
// request at a time.
type pipeline struct {
	exporter string
	label    string
	relabels []*relabel.Config
	scheme   model.ValidationScheme
	limits

	lb        *labels.Builder
	cb        *labels.Builder // the series of a protobuf summary or histogram
	sb        labels.ScratchBuilder
	st        *labels.SymbolTable
	lset      labels.Labels
	ex        exemplar.Exemplar
	labelPair *dto.LabelPair // the exporter label, shared by protobuf metrics
	// fast is the rules in the form the direct path applies to a series'
	// text, nil when a rule needs its labels; extra is what the direct
	// path splices into that text: the exporter label and the constant
	// labels of fast.
	fast  *fastRules
	extra []byte
	parts []part

	ch       chunker
	br       *bufio.Reader
	zr       *gzip.Reader // upstream decompression, reused
	frame    []byte
	omChunk  []byte // an OpenMetrics chunk with its end marker
	buf      []byte // output of the direct path
	skipMeta int    // replayed metadata entries the direct path must not repeat
	esc      model.EscapingScheme
	out      Format // of the families path
	asm      assembler
	fw       familyWriter
	part     pbPart
	samples  int
	// cache remembers relabel outcomes across scrapes for the direct path,
	// nil when off; cached is the entry found for the series at hand.
	cache  *seriesCache
	cached *seriesEntry
	// stripCreated drops created timestamps of protobuf input written as
	// OpenMetrics: the exporter would not have sent _created lines there.
	stripCreated bool
}

// limits bound what a pipeline holds at once: a line of text, a protobuf
// frame, one metric (a summary or histogram with all its series).
type limits struct {
	maxLine, maxFrame, maxMetric int
}

// defaultLimits are the limits of a configuration that sets none.
var defaultLimits = limits{maxLine: DefaultMaxLineBytes, maxFrame: DefaultMaxFrameBytes, maxMetric: DefaultMaxMetricBytes}

// size is about how much memory the pipeline's buffers hold.
func (p *pipeline) size() int {
	return cap(p.ch.buf) + cap(p.ch.scratch) + cap(p.frame) + cap(p.omChunk) + cap(p.buf) + cap(p.fw.buf) + 64*cap(p.parts)
}

func newPipeline(exporter, label string, relabels []*relabel.Config, lim limits) *pipeline {
	p := &pipeline{
		exporter: exporter, relabels: relabels, scheme: model.UTF8Validation, limits: lim,
		lb: labels.NewBuilder(labels.EmptyLabels()), cb: labels.NewBuilder(labels.EmptyLabels()),
		st: labels.NewSymbolTable(),
	}
	// Validate sets every rule's scheme; one that was never validated
	// would make the validity checks panic.
	if len(relabels) > 0 && relabels[0].NameValidationScheme != model.UnsetValidation {
		p.scheme = relabels[0].NameValidationScheme
	}
	p.initLabel(label)
	return p
}

// setLabel sets the name of the label that carries the exporter's name, ""
// for none. Only the aggregate endpoint adds one: there the series of
// several exporters share a target. On an exporter's own endpoint the
// target's labels tell the exporter already, and a scraped label of the same
// name as a target label would be renamed to exported_<name> by Prometheus.
func (p *pipeline) setLabel(label string) {
	if label != p.label {
		p.initLabel(label)
	}
}

// initLabel prepares what depends on the exporter label.
func (p *pipeline) initLabel(label string) {
	p.label, p.labelPair, p.extra = label, nil, nil
	if label != "" {
		p.labelPair = &dto.LabelPair{Name: proto.String(label), Value: proto.String(p.exporter)}
		p.extra = appendQuoted(append([]byte(label), '='), p.exporter)
	}
	p.fast = nil
	if len(p.relabels) > 0 {
		p.fast = newFastRules(p.relabels, label)
	}
	if p.fast != nil && len(p.fast.extra) > 0 {
		if len(p.extra) > 0 {
			p.extra = append(p.extra, ',')
		}
		p.extra = append(p.extra, p.fast.extra...)
	}
}

// relabel adds the exporter label (aggregate endpoint only) and applies
// metric_relabel_configs, in Prometheus' order: target labels first (an
// upstream label of the same name is kept as exported_<name>, as with
// honor_labels: false), then the rules.
func (p *pipeline) relabel(lset labels.Labels) (labels.Labels, bool, error) {
	p.lb.Reset(lset)
	if p.label != "" {
		if v := lset.Get(p.label); v != "" {
			name := model.ExportedLabelPrefix + p.label
			for lset.Get(name) != "" {
				name = model.ExportedLabelPrefix + name
			}
			p.lb.Set(name, v)
		}
		p.lb.Set(p.label, p.exporter)
	}
	if len(p.relabels) == 0 {
		return p.lb.Labels(), true, nil
	}
	if !relabel.ProcessBuilder(p.lb, p.relabels...) {
		return labels.EmptyLabels(), false, nil
	}
	out := p.lb.Labels()
	if out.Get(model.MetricNameLabel) == "" || !out.IsValid(p.scheme) {
		return out, false, fmt.Errorf("%w: %s", errRelabel, truncate(out.String()))
	}
	return out, true, nil
}

// relay copies body in format in (Content-Type ct) to w in format out,
// spelling names that are not classic ones with esc.
func (p *pipeline) relay(body io.Reader, in Format, ct string, out Format, esc model.EscapingScheme, w io.Writer) error {
	p.samples = 0
	p.esc = esc
	if in == out && in != FormatProtobuf {
		return p.direct(body, ct, out == FormatOpenMetrics, w)
	}
	p.fw.reset(w, out, esc)
	if err := p.families(body, in, ct, out, p.fw.write); err != nil {
		return err
	}
	return p.fw.finish()
}

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
	// series gets the parser's text of a series and, when wanted, its
	// labels (before relabeling).
	series(raw []byte, lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) error
}

// parse runs a parser over one chunk.
func (p *pipeline) parse(chunk []byte, ct string, om bool, h handler) error {
	if om {
		// Each chunk is parsed on its own; OpenMetrics requires the marker.
		p.omChunk = append(append(p.omChunk[:0], chunk...), "# EOF\n"...)
		chunk = p.omChunk
	}
	parser, err := textparse.New(chunk, ct, p.st, textparse.ParserOptions{})
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
			if len(raw) > 0 && raw[0] == '{' && len(sampleName(raw)) == 0 {
				return fmt.Errorf("%w: series without a metric name", errParse)
			}
			if !utf8.Valid(raw) {
				return fmt.Errorf("%w: series %q is not UTF-8", errParse, truncate(string(raw)))
			}
			lset := labels.EmptyLabels()
			if h.wantLabels(raw) {
				parser.Labels(&p.lset)
				lset = p.lset
			}
			var ex *exemplar.Exemplar
			if om {
				p.ex = exemplar.Exemplar{}
				if parser.Exemplar(&p.ex) {
					ex = &p.ex
				}
			}
			err = h.series(raw, lset, v, ts, ex)
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

// directHandler writes each sample straight from the parser: text to text
// or OpenMetrics to OpenMetrics, the fast path.
type directHandler struct {
	p  *pipeline
	om bool
}

func (d directHandler) meta(kind metaKind, name, value []byte, typ model.MetricType) error {
	p := d.p
	if p.skipMeta > 0 {
		p.skipMeta--
		return nil
	}
	switch kind {
	case metaHelp:
		p.buf = appendHelp(p.buf, name, value, d.om, p.esc)
	case metaType:
		p.buf = appendMetaLine(p.buf, "TYPE", name, typeName(typ, d.om), p.esc)
	case metaUnit:
		if d.om {
			p.buf = appendMetaLine(p.buf, "UNIT", name, string(value), p.esc)
		}
	}
	return nil
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
func (d directHandler) wantLabels(raw []byte) bool {
	p := d.p
	p.cached = nil
	if !d.needsLabels(raw) {
		return false
	}
	if p.cache != nil {
		p.cached = p.cache.get(p.cache.cacheKey(raw, p.esc, d.om))
		return p.cached == nil
	}
	return true
}

func (d directHandler) needsLabels(raw []byte) bool {
	p := d.p
	if p.esc != model.NoEscaping && hasQuotedName(raw) {
		return true
	}
	if len(p.relabels) > 0 {
		return p.fast == nil || !p.fast.handles(raw)
	}
	return p.label != "" && bytes.Contains(raw, []byte(p.label))
}

func (d directHandler) series(raw []byte, lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) error {
	p := d.p
	if c := p.cached; c != nil {
		p.cached = nil
		if c.dropped {
			return nil
		}
		p.samples++
		p.buf = appendValueSuffix(append(p.buf, c.series...), v, ts, ex, d.om, p.esc)
		return nil
	}
	if lset.IsEmpty() {
		if p.fast != nil && !p.fast.keep(raw) {
			return nil
		}
		p.samples++
		p.buf = appendRawSample(p.buf, raw, p.extra, v, ts, ex, d.om, p.esc)
		return nil
	}
	out, keep, err := p.relabel(lset)
	if err != nil {
		return err
	}
	if !keep {
		if p.cache != nil {
			p.cache.put(p.cache.cacheKey(raw, p.esc, d.om), true, nil)
		}
		return nil
	}
	p.samples++
	start := len(p.buf)
	p.buf = appendSeries(p.buf, out, p.esc)
	if p.cache != nil {
		p.cache.put(p.cache.cacheKey(raw, p.esc, d.om), false, p.buf[start:])
	}
	p.buf = appendValueSuffix(p.buf, v, ts, ex, d.om, p.esc)
	return nil
}

// direct relays text to text or OpenMetrics to OpenMetrics.
func (p *pipeline) direct(body io.Reader, ct string, om bool, w io.Writer) error {
	// Text chunks may end anywhere between lines: the text parser needs no
	// family context. OpenMetrics chunks end at family boundaries, since
	// its parser checks samples against their family's type.
	p.ch.reset(body, p.maxLine, p.maxMetric, chunkBytes, om, om)
	h := directHandler{p, om}
	for {
		chunk, replayed, err := p.ch.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		p.buf = p.buf[:0]
		p.skipMeta = replayed
		if err := p.parse(chunk, ct, om, h); err != nil {
			return err
		}
		if len(p.buf) > 0 {
			if _, err := w.Write(p.buf); err != nil {
				return err
			}
		}
	}
	if om {
		if _, err := io.WriteString(w, "# EOF\n"); err != nil {
			return err
		}
	}
	return nil
}

// familyHandler feeds relabeled series to the assembler.
type familyHandler struct{ p *pipeline }

func (f familyHandler) meta(kind metaKind, name, value []byte, typ model.MetricType) error {
	return f.p.asm.meta(kind, name, value, typ)
}

func (familyHandler) wantLabels([]byte) bool { return true }

func (f familyHandler) series(_ []byte, lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) error {
	p := f.p
	out, keep, err := p.relabel(lset)
	if !keep {
		return err
	}
	p.samples++
	return p.asm.sample(out, v, ts, ex)
}

// families reads body and calls emit with each relabeled family, in the
// order of the body. A family larger than a chunk comes in parts, one
// call each, with the same name. The family is only valid during the call.
func (p *pipeline) families(body io.Reader, in Format, ct string, out Format, emit func(*dto.MetricFamily) error) error {
	p.out = out
	if in == FormatProtobuf {
		p.stripCreated = out == FormatOpenMetrics
		return p.protobufFamilies(body, emit)
	}
	om := in == FormatOpenMetrics
	p.ch.reset(body, p.maxLine, p.maxMetric, chunkBytes, true, om)
	p.asm.reset(om, out == FormatProtobuf, emit)
	h := familyHandler{p}
	for {
		chunk, _, err := p.ch.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := p.parse(chunk, ct, om, h); err != nil {
			return err
		}
		if err := p.asm.flush(); err != nil {
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
