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
	"encoding/binary"
	"errors"
	"io"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protowire"
)

// The aggregate endpoint's protobuf responses, as segment.go does for
// text: each exporter is relayed to protobuf as its own endpoint relays it,
// its output is cut into frames, and the frames are merged by family name;
// only a name that several exporters send is written as a new frame, its
// metrics joined under the first one's metadata.

// frame is one MetricFamily of relayed protobuf output, its metadata read.
type frame struct {
	name string
	// rawName is the name in the frame, until the framer sets name.
	rawName    []byte
	typ        dto.MetricType
	help, unit []byte // nil when absent
	// start and end delimit the frame in its batch's buffer, its length
	// prefix included; body is where the message starts.
	start, body, end int
	// metrics delimits the metric fields in the message, which the relay
	// writes one after the other; split says other fields come between
	// them, so they are taken one by one.
	metrics [2]int
	split   bool
}

// bare is isBare for a frame: an untyped family without help or unit,
// which may come again.
func (f *frame) bare() bool {
	return f.typ == dto.MetricType_UNTYPED && f.help == nil && f.unit == nil
}

// frameBatch is consecutive frames of one exporter's output.
type frameBatch = batch[frame]

// framer is the writer a relay of one exporter writes its protobuf output
// to on the aggregate endpoint: it passes on each write's complete frames
// in one batch and holds a frame cut by the end of a write. As the
// segmenter does, it hands buf itself to the batch and moves what it
// holds to the buffer of a batch the merge gave back.
//
// The relay's protobuf writers (familyWriter, the stream path, the wire
// frames of text input) write into the buffer the framer lends them and
// tell it each frame's metadata (writeFrames), as the text writers tell
// the segmenter their lines: reading every frame's fields again was most
// of what framing cost. Other writes are cut by reading the frames.
type framer struct {
	emit func(*frameBatch) error
	// recycle hands out an empty batch, one the merge is done with when
	// there is one.
	recycle func() *frameBatch
	// release, when set, takes the framer's buffers at close.
	release func(*frameBatch)
	buf     []byte
	frames  []frame
	started bool // buf and frames were taken from a recycled batch
	// read counts the frames cut by reading their fields, for the tests.
	read int
}

func newFramer(emit func(*frameBatch) error) *framer {
	return &framer{emit: emit, recycle: func() *frameBatch { return &frameBatch{} }}
}

func (fr *framer) Write(b []byte) (int, error) {
	fr.start()
	fr.buf = append(fr.buf, b...)
	return len(b), fr.cut(0, nil)
}

// start takes the buffers of a recycled batch before the first write.
func (fr *framer) start() {
	if !fr.started {
		first := fr.recycle()
		fr.buf, fr.frames = first.buf, first.parts
		fr.started = true
	}
}

// cut passes on the complete frames in buf: those marks lists, which start
// at its start, as marked, and the others as read.
func (fr *framer) cut(from int, marks []frameMark) error {
	frames := fr.frames[:0]
	off, marked := 0, 0
	if from == 0 {
		frames, off = fr.marked(frames, marks)
		marked = len(frames)
	}
	for off < len(fr.buf) {
		size, n := binary.Uvarint(fr.buf[off:])
		if n <= 0 || uint64(len(fr.buf)-off-n) < size {
			break // the frame goes on in the next write
		}
		frames = append(frames, frame{start: off, body: off + n, end: off + n + int(size)})
		off += n + int(size)
	}
	fr.frames = frames
	if len(frames) == 0 {
		return nil
	}
	// The batch takes buf and frames, and the next ones go on in a batch
	// the merge gave back.
	batch := fr.recycle()
	batch.buf, fr.buf = fr.buf[:off], append(batch.buf[:0], fr.buf[off:]...)
	batch.parts, fr.frames = frames, batch.parts[:0]
	for i := range batch.parts[marked:] {
		f := &batch.parts[marked+i]
		if err := f.scan(batch.buf[f.body:f.end]); err != nil {
			return err
		}
	}
	fr.read += len(batch.parts) - marked
	// The names are read where the batch keeps them, as the segmenter's
	// are: see partName.
	for i := range batch.parts {
		f := &batch.parts[i]
		f.name = partName(f.rawName)
	}
	return fr.emit(batch)
}

// frameMark is a frame that a writer of protobuf output wrote, with what
// the framer would read of it (frame.scan), so that it reads nothing:
// where the frame is in the buffer the framer lent (frameBuffer), and
// where its message, name, help, unit and metric fields are in it, and its
// type. Only start is counted from the start of the buffer, so that a mark
// moves with its frame by one addition.
type frameMark struct {
	// start is where the frame starts in the buffer, body and end where
	// its message starts and ends, counted from start.
	start, body, end int
	// name, help and unit are where the fields' bytes are in the message,
	// {0, 0} when absent (a field's bytes come after its tag); metrics is
	// frame.metrics, the metric fields, one after the other.
	name, help, unit, metrics [2]int
	typ                       dto.MetricType
}

// frameMarker is a writer that takes the frames of a write marked: the
// writers of protobuf output know each frame they write. It lends them its
// buffer, so that the output is written where the framer keeps it rather
// than copied there.
type frameMarker interface {
	io.Writer
	// frameBuffer is the buffer the next write is to be appended to. Its
	// bytes up to its length are the writer's, and stay as they are.
	frameBuffer() []byte
	// writeFrames takes the buffer back, with a write appended to it
	// after from whose frames marks lists in order.
	writeFrames(buf []byte, from int, marks []frameMark) error
}

func (fr *framer) frameBuffer() []byte {
	fr.start()
	return fr.buf
}

// writeFrames is Write of buf[from:], appended to the buffer frameBuffer
// lent. What the marks do not cover, or a write after an incomplete frame,
// is cut by reading the frames as Write does.
func (fr *framer) writeFrames(buf []byte, from int, marks []frameMark) error {
	fr.start()
	fr.buf = buf
	return fr.cut(from, marks)
}

// marked appends the frames marks lists to frames, as long as each starts
// where the one before ended, from the start of buf, and returns them and
// where the last ends. The marks are the relay's own; these checks only
// keep a wrong one from reaching past its frame.
func (fr *framer) marked(frames []frame, marks []frameMark) ([]frame, int) {
	buf, off := fr.buf, 0
	for i := range marks {
		m := &marks[i]
		body, end := m.start+m.body, m.start+m.end
		if m.start != off || m.body <= 0 || m.body > m.end || end > len(buf) {
			break
		}
		msg := buf[body:end]
		if !inMessage(m.name, msg) || !inMessage(m.help, msg) || !inMessage(m.unit, msg) || m.metrics != [2]int{} && !inMessage(m.metrics, msg) {
			break
		}
		frames = append(frames, frame{
			rawName: msg[m.name[0]:m.name[1]], typ: m.typ, help: markedBytes(msg, m.help), unit: markedBytes(msg, m.unit),
			start: m.start, body: body, end: end, metrics: m.metrics,
		})
		off = end
	}
	return frames, off
}

// inMessage reports whether span is absent ({0, 0}) or in msg.
func inMessage(span [2]int, msg []byte) bool {
	return span == [2]int{} || 0 < span[0] && span[0] <= span[1] && span[1] <= len(msg)
}

// markedBytes is the field span marks in msg, nil when it is absent.
func markedBytes(msg []byte, span [2]int) []byte {
	if span == [2]int{} {
		return nil
	}
	return msg[span[0]:span[1]]
}

// close reports a frame left incomplete, which the relay never writes.
func (fr *framer) close() error {
	if len(fr.buf) > 0 {
		return errors.New("relayed protobuf output ends within a frame")
	}
	if fr.release != nil && fr.started {
		fr.release(&frameBatch{buf: fr.buf, parts: fr.frames})
		fr.buf, fr.frames, fr.started = nil, nil, false
	}
	return nil
}

// scan reads the metadata of a MetricFamily the relay wrote.
func (f *frame) scan(b []byte) error {
	msg := b
	f.metrics = [2]int{}
	seen := false
	for len(b) > 0 {
		at := len(msg) - len(b)
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		field := b[:n]
		b = b[n:]
		switch {
		case num == fieldFamilyName && typ == protowire.BytesType:
			f.rawName, _ = protowire.ConsumeBytes(field)
		case num == fieldFamilyHelp && typ == protowire.BytesType:
			f.help, _ = protowire.ConsumeBytes(field)
		case num == fieldFamilyUnit && typ == protowire.BytesType:
			f.unit, _ = protowire.ConsumeBytes(field)
		case num == fieldFamilyType && typ == protowire.VarintType:
			v, _ := protowire.ConsumeVarint(field)
			f.typ = dto.MetricType(int32(v))
		case num == fieldFamilyMetric && typ == protowire.BytesType:
			if !seen {
				f.metrics[0], seen = at, true
			} else if f.metrics[1] != at {
				f.split = true
			}
			f.metrics[1] = len(msg) - len(b)
		}
	}
	return nil
}

// frameRef is a frame and the buffer it is in.
type frameRef struct {
	f   *frame
	buf []byte
}

// frameJoiner joins same-named frames for mergeFeeds, by the rules given
// at serveAggregate: a joined frame is what merging the families as metric
// families wrote (mergeFamilies in the tests).
type frameJoiner struct {
	r      *Relay
	merged []frameRef
}

func (j *frameJoiner) name(f *frame) string { return f.name }

func (j *frameJoiner) add(s *source, f *frame, buf []byte, _, repeated bool) {
	switch {
	case !f.bare() && repeated:
		j.r.drop(s)
	case len(j.merged) > 0 && j.merged[0].f.typ != f.typ:
		j.r.drop(s)
	default:
		j.merged = append(j.merged, frameRef{f, buf})
	}
}

func (j *frameJoiner) appendGroup(out []byte) ([]byte, bool) {
	switch len(j.merged) {
	case 0:
		return out, false
	case 1:
		out = append(out, j.merged[0].buf[j.merged[0].f.start:j.merged[0].f.end]...)
	default:
		out = appendJoined(out, j.merged)
	}
	meta := !j.merged[0].f.bare()
	j.merged = j.merged[:0]
	return out, meta
}

// mergeFrames writes the families of all sources in name order, joining
// same-named ones (frameJoiner).
func (r *Relay) mergeFrames(sources []*source, w io.Writer) error {
	return mergeFeeds(r, sources, func(s *source) *feed[frame] { return s.frames }, &frameJoiner{r: r}, w, "")
}

// appendJoined appends one frame of the metrics of several same-named
// frames, as proto.Marshal writes the family that merge builds: the first
// one's name, type and unit, the first help there is, all metrics in order.
func appendJoined(b []byte, frames []frameRef) []byte {
	first := frames[0].f
	var help []byte
	size := 0
	for _, r := range frames {
		if help == nil && r.f.help != nil {
			help = r.f.help
		}
		size += r.f.metricsSize(r.buf)
	}
	size += protowire.SizeTag(fieldFamilyName) + protowire.SizeBytes(len(first.name))
	if help != nil {
		size += protowire.SizeTag(fieldFamilyHelp) + protowire.SizeBytes(len(help))
	}
	size += protowire.SizeTag(fieldFamilyType) + protowire.SizeVarint(uint64(first.typ))
	if first.unit != nil {
		size += protowire.SizeTag(fieldFamilyUnit) + protowire.SizeBytes(len(first.unit))
	}
	b = protowire.AppendVarint(b, uint64(size))
	b = protowire.AppendTag(b, fieldFamilyName, protowire.BytesType)
	b = protowire.AppendString(b, first.name)
	if help != nil {
		b = protowire.AppendTag(b, fieldFamilyHelp, protowire.BytesType)
		b = protowire.AppendBytes(b, help)
	}
	b = protowire.AppendTag(b, fieldFamilyType, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(first.typ))
	for _, r := range frames {
		b = r.f.appendMetrics(b, r.buf)
	}
	if first.unit != nil {
		b = protowire.AppendTag(b, fieldFamilyUnit, protowire.BytesType)
		b = protowire.AppendBytes(b, first.unit)
	}
	return b
}

// metricsSize is how many bytes appendMetrics appends.
func (f *frame) metricsSize(buf []byte) int {
	if f.split {
		return metricFieldsSize(buf[f.body:f.end])
	}
	return f.metrics[1] - f.metrics[0]
}

// appendMetrics appends the frame's metric fields, which are in buf, to b.
func (f *frame) appendMetrics(b, buf []byte) []byte {
	if f.split {
		return appendMetricFields(b, buf[f.body:f.end])
	}
	return append(b, buf[f.body+f.metrics[0]:f.body+f.metrics[1]]...)
}

// appendMetricFields appends the metric fields of MetricFamily message
// msg, which frame.scan read, to b.
func appendMetricFields(b, msg []byte) []byte {
	forMetricFields(msg, func(field []byte) { b = append(b, field...) })
	return b
}

// metricFieldsSize is how many bytes appendMetricFields appends.
func metricFieldsSize(msg []byte) int {
	n := 0
	forMetricFields(msg, func(field []byte) { n += len(field) })
	return n
}

// forMetricFields calls f with each metric field of message msg, its tag
// included.
func forMetricFields(msg []byte, f func(field []byte)) {
	for len(msg) > 0 {
		num, typ, tn := protowire.ConsumeTag(msg)
		if tn < 0 {
			return
		}
		vn := protowire.ConsumeFieldValue(num, typ, msg[tn:])
		if vn < 0 {
			return
		}
		if num == fieldFamilyMetric && typ == protowire.BytesType {
			f(msg[:tn+vn])
		}
		msg = msg[tn+vn:]
	}
}

// familyMark is the mark of the frame of family mf that proto.Marshal
// wrote in buf, from start, its message from body to the end of buf. It
// writes a MetricFamily's fields in the order of their numbers (name,
// help, type, metrics, unit), each once, and the unknown fields last. A
// family with unknown fields, which a closed enum's value the relay does
// not know may have left there, is read as the framer reads it.
func familyMark(mf *dto.MetricFamily, buf []byte, start, body int) frameMark {
	msg := buf[body:]
	end := len(msg)
	m := frameMark{start: start, body: body - start, end: len(buf) - start, typ: mf.GetType()}
	if len(mf.ProtoReflect().GetUnknown()) > 0 {
		var f frame
		_ = f.scan(msg) // proto.Marshal wrote it
		m.typ, m.metrics = f.typ, f.metrics
		m.name, m.help, m.unit = fieldSpan(msg, f.rawName), fieldSpan(msg, f.help), fieldSpan(msg, f.unit)
		return m
	}
	at := 0
	field := func(num protowire.Number, v *string) [2]int {
		if v == nil {
			return [2]int{}
		}
		at += protowire.SizeTag(num) + protowire.SizeVarint(uint64(len(*v)))
		at += len(*v)
		return [2]int{at - len(*v), at}
	}
	m.name = field(fieldFamilyName, mf.Name)
	m.help = field(fieldFamilyHelp, mf.Help)
	if mf.Type != nil {
		at += protowire.SizeTag(fieldFamilyType) + protowire.SizeVarint(uint64(*mf.Type))
	}
	metricsEnd := end
	if mf.Unit != nil {
		m.unit = [2]int{end - len(*mf.Unit), end}
		metricsEnd -= protowire.SizeTag(fieldFamilyUnit) + protowire.SizeBytes(len(*mf.Unit))
	}
	m.metrics = [2]int{at, metricsEnd}
	return m
}

// fieldSpan is where field, which frame.scan read from msg, is in msg;
// {0, 0} for nil.
func fieldSpan(msg, field []byte) [2]int {
	if field == nil {
		return [2]int{}
	}
	at := cap(msg) - cap(field)
	return [2]int{at, at + len(field)}
}
