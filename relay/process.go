package relay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"github.com/prometheus/prometheus/model/textparse"
	"google.golang.org/protobuf/encoding/protodelim"
	"google.golang.org/protobuf/proto"
)

// directChunkBytes is the chunk size the direct path aims for.
const directChunkBytes = 64 << 10

// errParse wraps failures of the exposition parsers.
var errParse = errors.New("malformed upstream body")

// pipeline relays one upstream body: parse family by family, relabel each
// series, encode. Its buffers are reused across families, so memory is
// bounded by the largest family, not by the body. A pipeline serves one
// request at a time.
type pipeline struct {
	exporter string
	label    string
	relabels []*relabel.Config
	maxLine  int

	lb      *labels.Builder
	lset    labels.Labels
	ex      exemplar.Exemplar
	buf     []byte
	frame   []byte
	fb      familyBuilder
	samples int
}

func newPipeline(exporter, label string, relabels []*relabel.Config, maxLine int) *pipeline {
	return &pipeline{exporter: exporter, label: label, relabels: relabels, maxLine: maxLine, lb: labels.NewBuilder(labels.EmptyLabels())}
}

// relabel applies the exporter label and metric_relabel_configs. An
// upstream label of the same name as the exporter label is kept as
// exported_<name>, as Prometheus does for target labels.
func (p *pipeline) relabel(lset labels.Labels) (labels.Labels, bool) {
	p.lb.Reset(lset)
	if p.label != "" {
		if v := lset.Get(p.label); v != "" {
			p.lb.Set(model.ExportedLabelPrefix+p.label, v)
		}
		p.lb.Set(p.label, p.exporter)
	}
	if len(p.relabels) > 0 && !relabel.ProcessBuilder(p.lb, p.relabels...) {
		return labels.EmptyLabels(), false
	}
	return p.lb.Labels(), true
}

// relay copies body in format in (Content-Type ct) to w in format out,
// calling flush after every family.
func (p *pipeline) relay(body io.Reader, in Format, ct string, out Format, w io.Writer, flush func()) error {
	if in == out && in != FormatProtobuf {
		return p.direct(body, ct, out == FormatOpenMetrics, w, flush)
	}
	err := p.families(body, in, ct, func(mf *dto.MetricFamily) error {
		if err := encodeFamily(w, mf, out); err != nil {
			return err
		}
		flush()
		return nil
	})
	if err != nil {
		return err
	}
	return finish(w, out)
}

// finish writes what a format needs after the last family.
func finish(w io.Writer, out Format) error {
	if out == FormatOpenMetrics {
		_, err := expfmt.FinalizeOpenMetrics(w)
		return err
	}
	return nil
}

func encodeFamily(w io.Writer, mf *dto.MetricFamily, out Format) error {
	var err error
	switch out {
	case FormatProtobuf:
		_, err = protodelim.MarshalTo(w, mf)
	case FormatOpenMetrics:
		_, err = expfmt.MetricFamilyToOpenMetrics(w, mf)
	default:
		_, err = expfmt.MetricFamilyToText(w, mf)
	}
	return err
}

func parserOptions() textparse.ParserOptions {
	return textparse.ParserOptions{OpenMetricsSkipSTSeries: false}
}

// seriesFunc receives one sample: the parser's text of the series and,
// when the caller asked for them, its labels (before relabeling).
type seriesFunc func(raw []byte, lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) error

// parse runs a parser over one chunk. meta is called for HELP, TYPE and
// UNIT lines, series for every sample. wantLabels decides per series
// whether its labels are needed; building them is the most expensive part
// of relaying, so the fast path skips it when it can.
func (p *pipeline) parse(chunk []byte, ct string, om bool,
	meta func(kind byte, name, value []byte, typ model.MetricType),
	wantLabels func(raw []byte) bool,
	series seriesFunc,
) error {
	if om {
		// Each chunk is parsed on its own; OpenMetrics requires the end marker.
		chunk = append(chunk, "# EOF\n"...)
	}
	parser, err := textparse.New(chunk, ct, nil, parserOptions())
	if err != nil {
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
			meta('H', name, help, "")
		case textparse.EntryType:
			name, typ := parser.Type()
			meta('T', name, nil, typ)
		case textparse.EntryUnit:
			name, unit := parser.Unit()
			meta('U', name, unit, "")
		case textparse.EntrySeries:
			raw, ts, v := parser.Series()
			lset := labels.EmptyLabels()
			if wantLabels(raw) {
				parser.Labels(&p.lset)
				lset = p.lset
			}
			var ex *exemplar.Exemplar
			p.ex = exemplar.Exemplar{}
			if om && parser.Exemplar(&p.ex) {
				ex = &p.ex
			}
			if err := series(raw, lset, v, ts, ex); err != nil {
				return err
			}
		case textparse.EntryHistogram:
			// Only the protobuf parser yields these, and protobuf input does
			// not come this way.
			return fmt.Errorf("%w: unexpected native histogram in text input", errParse)
		}
	}
}

// needLabels reports whether a series must go through relabeling with
// labels built: always with metric_relabel_configs, and when the series
// text mentions the exporter label's name, which may then be taken already
// (an upstream label of that name is renamed, see relabel). Everything else
// takes the fast path: the parser's own text of the series, with the
// exporter label appended.
func (p *pipeline) needLabels(raw []byte) bool {
	if len(p.relabels) > 0 {
		return true
	}
	return p.label != "" && bytes.Contains(raw, []byte(p.label))
}

// direct relays text to text or OpenMetrics to OpenMetrics, writing each
// relabeled sample straight from the parser: the fast path.
func (p *pipeline) direct(body io.Reader, ct string, om bool, w io.Writer, flush func()) error {
	// Families are batched into chunks of directChunkBytes: the direct path
	// does not care where one family ends, and node_exporter's many small
	// families would otherwise cost a parser each.
	ch := newLineChunker(body, p.maxLine, om, directChunkBytes)
	for {
		chunk, err := ch.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		p.buf = p.buf[:0]
		err = p.parse(chunk, ct, om,
			func(kind byte, name, value []byte, typ model.MetricType) {
				switch kind {
				case 'H':
					p.buf = appendHelp(p.buf, name, value, om)
				case 'T':
					p.buf = appendMetaLine(p.buf, "TYPE", name, typeName(typ, om))
				case 'U':
					if om {
						p.buf = appendMetaLine(p.buf, "UNIT", name, string(value))
					}
				}
			},
			p.needLabels,
			func(raw []byte, lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) error {
				if lset.IsEmpty() {
					p.samples++
					p.buf = appendRawSample(p.buf, raw, p.label, p.exporter, v, ts, ex, om)
					return nil
				}
				out, keep := p.relabel(lset)
				if !keep {
					return nil
				}
				p.samples++
				p.buf = appendSample(p.buf, out, v, ts, ex, om)
				return nil
			})
		if err != nil {
			return err
		}
		if _, err := w.Write(p.buf); err != nil {
			return err
		}
		flush()
	}
	if om {
		if _, err := io.WriteString(w, "# EOF\n"); err != nil {
			return err
		}
	}
	return nil
}

// families reads body and calls fn with each relabeled family. The family
// is only valid during the call.
func (p *pipeline) families(body io.Reader, in Format, ct string, fn func(*dto.MetricFamily) error) error {
	if in == FormatProtobuf {
		return p.protobufFamilies(body, fn)
	}
	om := in == FormatOpenMetrics
	ch := newLineChunker(body, p.maxLine, om, 0)
	for {
		chunk, err := ch.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		p.fb.reset("", "", "", model.MetricTypeUnknown)
		err = p.parse(chunk, ct, om,
			func(kind byte, name, value []byte, typ model.MetricType) {
				if p.fb.name != string(name) && p.fb.fam == nil {
					p.fb.name = string(name)
				}
				switch kind {
				case 'H':
					p.fb.help = string(value)
				case 'T':
					p.fb.typ = typ
				case 'U':
					p.fb.unit = string(value)
				}
			},
			func([]byte) bool { return true },
			func(_ []byte, lset labels.Labels, v float64, ts *int64, ex *exemplar.Exemplar) error {
				out, keep := p.relabel(lset)
				if !keep {
					return nil
				}
				p.samples++
				p.fb.add(out, v, ts, ex)
				return nil
			})
		if err != nil {
			return err
		}
		if p.fb.fam == nil && p.fb.name != "" && (p.fb.help != "" || p.fb.typ != model.MetricTypeUnknown) {
			p.fb.main() // metadata of a family whose samples were all dropped
		}
		for _, mf := range p.fb.families() {
			if err := fn(mf); err != nil {
				return err
			}
		}
	}
}

// protobufFamilies reads varint-delimited MetricFamily frames. Each frame is
// decoded into client_model types directly: they are what the output needs,
// and going through textparse's protobuf parser would flatten native
// histograms and exemplars into series only to rebuild them. Every metric is
// relabeled as a unit under its family name, which is how Prometheus
// relabels native histograms too.
func (p *pipeline) protobufFamilies(body io.Reader, fn func(*dto.MetricFamily) error) error {
	r := bufio.NewReaderSize(body, 64<<10)
	for {
		frame, err := readFrame(r, p.frame)
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
			return fmt.Errorf("%w: %w", errParse, err)
		}
		for _, out := range p.relabelFamily(mf) {
			if err := fn(out); err != nil {
				return err
			}
		}
	}
}

// validateFamily refuses what would make the encoders fail or lie.
func validateFamily(mf *dto.MetricFamily) error {
	if mf.GetName() == "" {
		return errors.New("metric family without a name")
	}
	for _, m := range mf.Metric {
		if m == nil {
			return errors.New("empty metric")
		}
		for _, l := range m.Label {
			if l == nil || l.GetName() == "" {
				return errors.New("label without a name")
			}
		}
	}
	return nil
}

// relabelFamily relabels every metric of a family. A metric whose name is
// changed by a rule moves to a family of that name.
func (p *pipeline) relabelFamily(mf *dto.MetricFamily) []*dto.MetricFamily {
	name := mf.GetName()
	kept := mf.Metric[:0]
	var moved map[string]*dto.MetricFamily
	var order []*dto.MetricFamily
	var b labels.ScratchBuilder
	for _, m := range mf.Metric {
		b.Reset()
		b.Add(model.MetricNameLabel, name)
		for _, l := range m.Label {
			b.Add(l.GetName(), l.GetValue())
		}
		b.Sort()
		out, keep := p.relabel(b.Labels())
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
		if moved == nil {
			moved = make(map[string]*dto.MetricFamily)
		}
		dst, ok := moved[newName]
		if !ok {
			dst = &dto.MetricFamily{Name: proto.String(newName), Help: mf.Help, Type: mf.Type, Unit: mf.Unit}
			moved[newName] = dst
			order = append(order, dst)
		}
		dst.Metric = append(dst.Metric, m)
	}
	mf.Metric = kept
	return append([]*dto.MetricFamily{mf}, order...)
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

func timeFromMs(ms int64) time.Time { return time.UnixMilli(ms) }
