package relay

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"slices"
	"unicode/utf8"

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
	maxLine  int
	maxFrame int

	lb        *labels.Builder
	sb        labels.ScratchBuilder
	st        *labels.SymbolTable
	lset      labels.Labels
	ex        exemplar.Exemplar
	labelPair *dto.LabelPair // the exporter label, shared by protobuf metrics

	ch       chunker
	br       *bufio.Reader
	zr       *gzip.Reader // upstream decompression, reused
	frame    []byte
	omChunk  []byte // an OpenMetrics chunk with its end marker
	buf      []byte // output of the direct path
	skipMeta int    // replayed metadata entries the direct path must not repeat
	asm      assembler
	fw       familyWriter
	samples  int
	// stripCreated drops created timestamps of protobuf input written as
	// OpenMetrics: the exporter would not have sent _created lines there.
	stripCreated bool
}

// size is about how much memory the pipeline's buffers hold.
func (p *pipeline) size() int {
	return cap(p.ch.buf) + cap(p.ch.scratch) + cap(p.frame) + cap(p.omChunk) + cap(p.buf) + p.fw.buf.Cap()
}

func newPipeline(exporter, label string, relabels []*relabel.Config, maxLine, maxFrame int) *pipeline {
	p := &pipeline{
		exporter: exporter, label: label, relabels: relabels, scheme: model.UTF8Validation,
		maxLine: maxLine, maxFrame: maxFrame,
		lb: labels.NewBuilder(labels.EmptyLabels()), st: labels.NewSymbolTable(),
	}
	if len(relabels) > 0 {
		p.scheme = relabels[0].NameValidationScheme
	}
	p.setLabel(label)
	return p
}

// setLabel sets the name of the label that carries the exporter's name, ""
// for none. Only the aggregate endpoint adds one: there the series of
// several exporters share a target. On an exporter's own endpoint the
// target's labels tell the exporter already, and a scraped label of the same
// name as a target label would be renamed to exported_<name> by Prometheus.
func (p *pipeline) setLabel(label string) {
	if label == p.label && (label == "") == (p.labelPair == nil) {
		return
	}
	p.label, p.labelPair = label, nil
	if label != "" {
		p.labelPair = &dto.LabelPair{Name: proto.String(label), Value: proto.String(p.exporter)}
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

// relay copies body in format in (Content-Type ct) to w in format out.
func (p *pipeline) relay(body io.Reader, in Format, ct string, out Format, w io.Writer) error {
	p.samples = 0
	if in == out && in != FormatProtobuf {
		return p.direct(body, ct, out == FormatOpenMetrics, w)
	}
	p.fw.reset(w, out)
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
			err = h.meta(metaHelp, name, help, "")
		case textparse.EntryType:
			name, typ := parser.Type()
			err = h.meta(metaType, name, nil, typ)
		case textparse.EntryUnit:
			name, unit := parser.Unit()
			err = h.meta(metaUnit, name, unit, "")
		case textparse.EntrySeries:
			raw, ts, v := parser.Series()
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
		p.buf = appendHelp(p.buf, name, value, d.om)
	case metaType:
		p.buf = appendMetaLine(p.buf, "TYPE", name, typeName(typ, d.om))
	case metaUnit:
		if d.om {
			p.buf = appendMetaLine(p.buf, "UNIT", name, string(value))
		}
	}
	return nil
}

// wantLabels sends a series through relabeling with its labels built
// when there are rules, and when its text mentions the exporter label's
// name, which may then be taken already (see relabel). Everything else
// takes the parser's text of the series, with the exporter label appended.
func (d directHandler) wantLabels(raw []byte) bool {
	p := d.p
	if len(p.relabels) > 0 {
		return true
	}
	return p.label != "" && bytes.Contains(raw, []byte(p.label))
}

func (d directHandler) series(raw []byte, lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) error {
	p := d.p
	if lset.IsEmpty() {
		p.samples++
		p.buf = appendRawSample(p.buf, raw, p.label, p.exporter, v, ts, ex, d.om)
		return nil
	}
	out, keep, err := p.relabel(lset)
	if !keep {
		return err
	}
	p.samples++
	p.buf = appendSample(p.buf, out, v, ts, ex, d.om)
	return nil
}

// direct relays text to text or OpenMetrics to OpenMetrics.
func (p *pipeline) direct(body io.Reader, ct string, om bool, w io.Writer) error {
	// Text chunks may end anywhere between lines: the text parser needs no
	// family context. OpenMetrics chunks end at family boundaries, since
	// its parser checks samples against their family's type.
	p.ch.reset(body, p.maxLine, chunkBytes, om, om)
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
	if in == FormatProtobuf {
		p.stripCreated = out == FormatOpenMetrics
		return p.protobufFamilies(body, emit)
	}
	om := in == FormatOpenMetrics
	p.ch.reset(body, p.maxLine, chunkBytes, true, om)
	p.asm.reset(om, emit)
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

// protobufFamilies reads varint-delimited MetricFamily frames. Each frame is
// decoded into client_model types directly: they are what the output needs,
// and going through textparse's protobuf parser would flatten native
// histograms and exemplars into series only to rebuild them.
func (p *pipeline) protobufFamilies(body io.Reader, emit func(*dto.MetricFamily) error) error {
	if p.br == nil {
		p.br = bufio.NewReaderSize(body, 64<<10)
	} else {
		p.br.Reset(body)
	}
	defer p.br.Reset(nil)
	for {
		frame, err := readFrame(p.br, p.frame, p.maxFrame)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p.frame = frame
		mf := &dto.MetricFamily{}
		if err := proto.Unmarshal(frame, mf); err != nil {
			return fmt.Errorf("%w: %w", errParse, err)
		}
		if err := validateFamily(mf); err != nil {
			return fmt.Errorf("%w: family %q: %w", errParse, truncate(mf.GetName()), err)
		}
		if p.stripCreated {
			for _, m := range mf.Metric {
				switch {
				case m.Counter != nil:
					m.Counter.CreatedTimestamp = nil
				case m.Summary != nil:
					m.Summary.CreatedTimestamp = nil
				case m.Histogram != nil:
					m.Histogram.CreatedTimestamp = nil
				}
			}
		}
		if err := p.relabelFamily(mf, emit); err != nil {
			return err
		}
	}
}

// validateFamily refuses what would make the encoders fail or Prometheus
// refuse the scrape: every metric carries the value of its family's type,
// and names and values are UTF-8.
func validateFamily(mf *dto.MetricFamily) error {
	if mf.GetName() == "" || !utf8.ValidString(mf.GetName()) {
		return errors.New("metric family without a valid name")
	}
	if !utf8.ValidString(mf.GetHelp()) || !utf8.ValidString(mf.GetUnit()) {
		return errors.New("help or unit is not UTF-8")
	}
	if _, ok := dto.MetricType_name[int32(mf.GetType())]; !ok {
		return fmt.Errorf("unknown metric type %d", mf.GetType())
	}
	for _, m := range mf.Metric {
		if m == nil {
			return errors.New("empty metric")
		}
		for _, l := range m.Label {
			if l == nil || l.GetName() == "" || !utf8.ValidString(l.GetName()) || !utf8.ValidString(l.GetValue()) {
				return errors.New("label without a valid name or with a value that is not UTF-8")
			}
		}
		var ok bool
		switch mf.GetType() {
		case dto.MetricType_COUNTER:
			ok = m.Counter != nil
		case dto.MetricType_GAUGE:
			ok = m.Gauge != nil
		case dto.MetricType_SUMMARY:
			ok = m.Summary != nil
		case dto.MetricType_UNTYPED:
			ok = m.Untyped != nil
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			ok = m.Histogram != nil
		}
		if !ok {
			return fmt.Errorf("metric without a %s value", mf.GetType())
		}
	}
	return nil
}

// relabelFamily relabels the metrics of a protobuf family and emits the
// result. A metric is relabeled as a unit under its family's name, as
// Prometheus relabels native histograms: rules see the labels of the
// family and the metric, not the _bucket, _sum and _count series of a
// classic histogram or summary. A metric renamed by a rule moves to a
// family of that name.
func (p *pipeline) relabelFamily(mf *dto.MetricFamily, emit func(*dto.MetricFamily) error) error {
	if len(p.relabels) == 0 {
		// No rules: add the exporter label, and only build label sets for
		// the rare metric that has a label of that name already.
		kept := mf.Metric[:0]
		for _, m := range mf.Metric {
			p.samples += sampleCount(m)
			if p.label == "" {
				kept = append(kept, m)
				continue
			}
			clash := false
			for _, l := range m.Label {
				if l.GetName() == p.label {
					clash = true
					break
				}
			}
			if !clash {
				// Keep the pairs sorted by name, as client libraries write them.
				i := 0
				for i < len(m.Label) && m.Label[i].GetName() < p.label {
					i++
				}
				m.Label = slices.Insert(m.Label, i, p.labelPair)
				kept = append(kept, m)
				continue
			}
			out, _, _ := p.relabel(p.metricLabels(mf.GetName(), m))
			m.Label = labelPairs(out, "")
			kept = append(kept, m)
		}
		mf.Metric = kept
		return emit(mf)
	}
	name := mf.GetName()
	kept := mf.Metric[:0]
	var moved []*dto.MetricFamily
	for _, m := range mf.Metric {
		out, keep, err := p.relabel(p.metricLabels(name, m))
		if err != nil {
			return err
		}
		if !keep {
			continue
		}
		p.samples += sampleCount(m)
		m.Label = labelPairs(out, "")
		newName := out.Get(model.MetricNameLabel)
		if newName == name {
			kept = append(kept, m)
			continue
		}
		var dst *dto.MetricFamily
		for _, f := range moved {
			if f.GetName() == newName {
				dst = f
				break
			}
		}
		if dst == nil {
			dst = &dto.MetricFamily{Name: proto.String(newName), Help: mf.Help, Type: mf.Type, Unit: mf.Unit}
			moved = append(moved, dst)
		}
		dst.Metric = append(dst.Metric, m)
	}
	mf.Metric = kept
	if err := emit(mf); err != nil {
		return err
	}
	for _, f := range moved {
		if err := emit(f); err != nil {
			return err
		}
	}
	return nil
}

// metricLabels is the label set of a protobuf metric under name.
func (p *pipeline) metricLabels(name string, m *dto.Metric) labels.Labels {
	p.sb.Reset()
	p.sb.Add(model.MetricNameLabel, name)
	for _, l := range m.Label {
		p.sb.Add(l.GetName(), l.GetValue())
	}
	p.sb.Sort()
	return p.sb.Labels()
}

// sampleCount is how many series a metric stands for, for the samples
// metric: buckets, quantiles, sum and count included.
func sampleCount(m *dto.Metric) int {
	switch {
	case m.Histogram != nil:
		if len(m.Histogram.Bucket) == 0 && (len(m.Histogram.PositiveSpan) > 0 || len(m.Histogram.NegativeSpan) > 0 || m.Histogram.ZeroThreshold != nil) {
			return 1
		}
		return len(m.Histogram.Bucket) + 3
	case m.Summary != nil:
		return len(m.Summary.Quantile) + 2
	}
	return 1
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
