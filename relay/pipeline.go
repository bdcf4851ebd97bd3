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
	"bufio"
	"errors"
	"io"
	"strings"
	"unsafe"

	"github.com/klauspost/compress/gzip"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/exemplar"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/relabel"
	"google.golang.org/protobuf/proto"
)

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
	// labelRare is the byte of label least likely in series text (see
	// rarestByte).
	labelRare byte
	relabels  []*relabel.Config
	scheme    model.ValidationScheme
	limits

	// Relabeling (relabel.go).
	relabelBuilder *labels.Builder // the labels a series' rules work on
	// classicBuilder builds the series of a protobuf summary or histogram
	// one by one (pbmetric.go).
	classicBuilder *labels.Builder
	metricScratch  labels.ScratchBuilder // a protobuf metric's labels
	classicParts   []part                // the series of a protobuf summary or histogram
	exporterPair   *dto.LabelPair        // the exporter label, shared by protobuf metrics
	labelField     []byte                // the exporter label as a Metric's label field
	// fastRules is the rules in the form the direct path applies to a
	// series' text, nil when a rule needs its labels (fastpath.go); splice
	// is what the direct path splices into that text: the exporter label
	// and the constant labels of fastRules.
	fastRules *fastRules
	splice    []byte

	// Parsing text and OpenMetrics (parse.go).
	chunks         chunker             // cuts the body into chunks for the parser
	symbols        *labels.SymbolTable // the parser's label strings, reused
	parsedLabels   labels.Labels       // the labels of the series at hand, when built
	parsedExemplar exemplar.Exemplar   // the exemplar of the series at hand
	omChunkBuf     []byte              // an OpenMetrics chunk with its end marker

	// The direct path: text to text, OpenMetrics to OpenMetrics (direct.go).
	directBuf        []byte // output of one chunk
	skipReplayedMeta int    // replayed metadata entries the direct path must not repeat
	escaping         model.EscapingScheme
	// marking says the direct path's writer takes its lines marked
	// (markedWriter); marks are the lines of directBuf then.
	marking bool
	marks   []lineMark

	// The families path: conversions and the aggregate endpoint
	// (families.go, dto.go, protobuf.go, pbmetric.go).
	familyFormat Format // the output format
	assembler    assembler
	familyWriter familyWriter
	frameReader  *bufio.Reader // protobuf input
	frameBuf     []byte        // one protobuf frame
	protobufPart pbPart        // the part of a protobuf family being relayed
	header       pbHeader      // the header of the protobuf frame at hand
	pbHeaders    pbHeaders     // protobuf headers seen before
	pbStream     pbStream      // protobuf to protobuf from the wire bytes (pbstream.go)

	gunzip  *gzip.Reader // upstream decompression, reused
	samples int          // relayed by the current scrape
	// cache remembers relabel outcomes across scrapes for the direct path,
	// nil when off; cached is the entry found for the series at hand.
	cache  *seriesCache
	cached *seriesEntry
	// cacheMissed says the series at hand was looked up in the cache in
	// vain, so its outcome is to be remembered (families path);
	// cacheValue is scratch for what is remembered.
	cacheMissed bool
	cacheValue  []byte
	// stripCreated drops created timestamps of protobuf input written as
	// OpenMetrics: the exporter would not have sent _created lines there.
	stripCreated bool
	// wireLabel says relabeling leaves the exporter label to the
	// assembler, for text written as protobuf without rules: a series it
	// writes as wire bytes gets the label's field there, which costs less
	// than building its labels anew with it (see familyHandler.series).
	wireLabel bool
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
	return cap(p.chunks.buf) + cap(p.chunks.scratch) + cap(p.frameBuf) + cap(p.omChunkBuf) + cap(p.directBuf) + 16*cap(p.marks) + cap(p.familyWriter.buf) + 64*cap(p.classicParts) +
		cap(p.pbStream.out) + cap(p.pbStream.body) + cap(p.assembler.wireBody) + cap(p.assembler.frame) + p.pbHeaders.bytes +
		int(unsafe.Sizeof(frameMark{}))*(cap(p.familyWriter.frameMarks)+cap(p.pbStream.frameMarks))
}

func newPipeline(exporter, label string, relabels []*relabel.Config, lim limits) *pipeline {
	p := &pipeline{
		exporter: exporter, relabels: relabels, scheme: model.UTF8Validation, limits: lim,
		relabelBuilder: labels.NewBuilder(labels.EmptyLabels()), classicBuilder: labels.NewBuilder(labels.EmptyLabels()),
		symbols: labels.NewSymbolTable(),
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
	p.label, p.exporterPair, p.labelField, p.splice = label, nil, nil, nil
	p.labelRare = rarestByte(label)
	if label != "" {
		p.exporterPair = &dto.LabelPair{Name: proto.String(label), Value: proto.String(p.exporter)}
		p.labelField = appendLabelPair(nil, label, p.exporter)
		p.splice = appendQuoted(append([]byte(label), '='), p.exporter)
	}
	p.fastRules = nil
	if len(p.relabels) > 0 {
		p.fastRules = newFastRules(p.relabels, label)
	}
	if p.fastRules != nil && len(p.fastRules.extra) > 0 {
		if len(p.splice) > 0 {
			p.splice = append(p.splice, ',')
		}
		p.splice = append(p.splice, p.fastRules.extra...)
	}
}

// relay copies body in format in (Content-Type ct) to w in format out,
// spelling names that are not classic ones with esc.
func (p *pipeline) relay(body io.Reader, in Format, ct string, out Format, esc model.EscapingScheme, w io.Writer) error {
	p.samples = 0
	p.escaping = esc
	if in == out && in != FormatProtobuf {
		return p.direct(body, ct, out == FormatOpenMetrics, w)
	}
	p.familyWriter.reset(w, out, esc)
	// A marked writer's buffer is not kept, also when the relay fails.
	defer p.familyWriter.unlend()
	switch {
	case p.pbStream.off:
	case in == FormatProtobuf:
		p.pbStream.to = &p.familyWriter
		defer func() { p.pbStream.to = nil }()
	case out == FormatProtobuf:
		p.assembler.wire = &p.familyWriter
		if p.label != "" && len(p.relabels) == 0 {
			p.wireLabel = true
			p.assembler.labelField = appendLabelPair(p.assembler.labelField[:0], escapeLabelName(p.label, esc), p.exporter)
			p.assembler.label = p.label
		}
		defer func() { p.assembler.wire, p.wireLabel = nil, false }()
	}
	if err := p.families(body, in, ct, out, p.familyWriter.write); err != nil {
		return err
	}
	return p.familyWriter.finish()
}

// byteFrequency lists the bytes of label names and series text from the
// most to the least common, by a rough count over exporters' output.
const byteFrequency = "e_\",=taoinsrlcmd{}hupg.bfywk0123456789v/-xjqz"

// rarestByte is the byte of s that is least common in series text, so that
// a search for it says quickly that s is not there; 0 for "".
func rarestByte(s string) byte {
	var rare byte
	rank := -1
	for i := 0; i < len(s); i++ {
		r := strings.IndexByte(byteFrequency, s[i])
		if r < 0 {
			return s[i] // rarer than any listed
		}
		if r > rank {
			rare, rank = s[i], r
		}
	}
	return rare
}
