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

//go:build !race

// The race detector multiplies memory use and time, so these bounds are
// only checked in normal builds; `make test` runs them too.

package relay

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/encoding/protowire"
)

// peakHeapGrowth runs f and samples the heap while it runs, returning how
// far the heap in use grew beyond what it was before.
func peakHeapGrowth(t *testing.T, f func()) int64 {
	t.Helper()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		var ms runtime.MemStats
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				runtime.ReadMemStats(&ms)
				if ms.HeapInuse > peak.Load() {
					peak.Store(ms.HeapInuse)
				}
			}
		}
	})
	f()
	close(stop)
	wg.Wait()
	return int64(peak.Load()) - int64(base.HeapInuse)
}

// TestRelay_MemoryBoundedOn100MB relays 100 MB expositions, text and
// protobuf, into every output format and samples the heap while they
// stream: the peak must stay far below the payload.
func TestRelay_MemoryBoundedOn100MB(t *testing.T) {
	const payload = 100 << 20
	tests := []struct {
		name    string
		in, out Format
		body    func() io.Reader
		cached  bool // relabel rules that need labels, and a full series cache
	}{
		{"text to text", FormatText, FormatText, func() io.Reader { return &repeatReader{remaining: payload} }, false},
		{"text to protobuf", FormatText, FormatProtobuf, func() io.Reader { return &repeatReader{remaining: payload} }, false},
		{"protobuf to protobuf", FormatProtobuf, FormatProtobuf, func() io.Reader { return &protoRepeatReader{remaining: payload} }, false},
		{"protobuf to text", FormatProtobuf, FormatText, func() io.Reader { return &protoRepeatReader{remaining: payload} }, false},
		{"text to text with rules and series cache", FormatText, FormatText, func() io.Reader { return &repeatReader{remaining: payload} }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPipeline("big", "exporter", nil, defaultLimits)
			if tt.cached {
				p = newPipeline("big", "", parseRules(t, cacheRules), defaultLimits)
				p.cache = newSeriesCache(DefaultSeriesCacheBytes)
			}
			ct := "text/plain"
			if tt.in == FormatProtobuf {
				ct = ContentTypeProtobuf
			}
			var err error
			counter := &countingWriter{}
			grown := peakHeapGrowth(t, func() {
				err = p.relay(tt.body(), tt.in, ct, tt.out, model.NoEscaping, counter)
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("heap in use grew by at most %.1f MiB relaying 100 MiB into %d bytes", float64(grown)/(1<<20), counter.n)
			if counter.n < payload/4 {
				t.Fatalf("only %d bytes written", counter.n)
			}
			if grown > 48<<20 {
				t.Fatalf("heap grew by %d MiB relaying 100 MiB: memory is not bounded by one family", grown>>20)
			}
			if tt.cached && (p.cache.bytes > DefaultSeriesCacheBytes || p.cache.len() == 0) {
				t.Fatalf("series cache holds %d bytes in %d entries, bound %d", p.cache.bytes, p.cache.len(), DefaultSeriesCacheBytes)
			}
		})
	}
}

// peakLiveGrowth runs f and samples the live heap while it runs: what the
// last completed collection found reachable. Unlike HeapInuse, it leaves out
// the garbage that has not been swept yet, so it is what the code under
// test holds rather than how far the collector's pacer let garbage pile up,
// which depends on the load of the machine. It returns how far the live
// heap grew beyond what it was before.
func peakLiveGrowth(t *testing.T, f func()) (grown int64, collections uint64) {
	t.Helper()
	samples := []metrics.Sample{{Name: "/gc/heap/live:bytes"}, {Name: "/gc/cycles/total:gc-cycles"}}
	runtime.GC()
	metrics.Read(samples)
	base, cycles := samples[0].Value.Uint64(), samples[1].Value.Uint64()
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				metrics.Read(s)
				if v := s[0].Value.Uint64(); v > peak.Load() {
					peak.Store(v)
				}
			}
		}
	})
	f()
	close(stop)
	wg.Wait()
	// The last cycle may have ended after the last sample.
	metrics.Read(samples)
	peak.Store(max(peak.Load(), samples[0].Value.Uint64()))
	return int64(peak.Load()) - int64(base), samples[1].Value.Uint64() - cycles
}

// TestRelay_MemoryBoundedOnTinyProtobufMetrics relays four 8 MiB protobuf
// frames of tiny gauges, each of which decodes to hundreds of megabytes
// whole: the relay holds one frame and one part of it decoded at a time,
// not the decoded frame, not the body and not the output.
//
// The test samples the live heap, not HeapInuse: the frame's buffer grows
// by doubling and decoding the parts churns through gigabytes of
// short-lived messages, so HeapInuse mostly measured garbage waiting for
// the sweeper, 30-40 MiB next to a 40 MiB bound depending on the machine's
// load. The collector runs often here so that the live heap is sampled at
// many points of the relay.
func TestRelay_MemoryBoundedOnTinyProtobufMetrics(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(20))
	frame := tinyGaugesFrame(8 << 20 / 4)
	body := bytes.Repeat(frame, 4)
	for _, out := range []Format{FormatProtobuf, FormatText} {
		t.Run(fmt.Sprint(out), func(t *testing.T) {
			p := newPipeline("tiny", "", nil, defaultLimits)
			var err error
			counter := &countingWriter{}
			grown, cycles := peakLiveGrowth(t, func() {
				err = p.relay(bytes.NewReader(body), FormatProtobuf, ContentTypeProtobuf, out, model.NoEscaping, counter)
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("live heap grew by at most %.1f MiB over %d collections relaying %.1f MiB in %.1f MiB frames into %.1f MiB",
				float64(grown)/(1<<20), cycles, float64(len(body))/(1<<20), float64(len(frame))/(1<<20), float64(counter.n)/(1<<20))
			if cycles < 10 {
				t.Fatalf("only %d collections while relaying: the live heap was not sampled", cycles)
			}
			// A frame is read into a buffer that grows to its size by
			// doubling (the length prefix is not trusted), with its
			// previous half still live at the last growth, and is held
			// while it is relayed one part of a few MiB at a time: about
			// 20 MiB at worst. Holding the body or the output (32 MiB or
			// more) exceeds the bound; decoding a frame whole would take
			// hundreds of megabytes.
			if bound := int64(len(body)) * 7 / 8; grown > bound {
				t.Fatalf("live heap grew by %.1f MiB relaying %.1f MiB, bound %.1f MiB",
					float64(grown)/(1<<20), float64(len(body))/(1<<20), float64(bound)/(1<<20))
			}
		})
	}
}

type countingWriter struct{ n int }

func (c *countingWriter) Write(p []byte) (int, error) {
	c.n += len(p)
	return len(p), nil
}

// protoRepeatReader yields a protobuf exposition of about n bytes, one
// family of 200 counters at a time, generated as it is read.
type protoRepeatReader struct {
	remaining int
	family    int
	buf       []byte
	// store and msg are buf's storage and a family's message, reused:
	// the reader makes little garbage, so the heap measures the relay.
	store, msg []byte
}

func (r *protoRepeatReader) Read(p []byte) (int, error) {
	if len(r.buf) == 0 {
		if r.remaining <= 0 {
			return 0, io.EOF
		}
		// What protodelim.MarshalTo writes for a family of 200 counters.
		m := protowire.AppendTag(r.msg[:0], fieldFamilyName, protowire.BytesType)
		m = protowire.AppendString(m, "big_"+strconv.Itoa(r.family)+"_total")
		m = protowire.AppendTag(m, fieldFamilyHelp, protowire.BytesType)
		m = protowire.AppendString(m, "Synthetic.")
		m = protowire.AppendTag(m, fieldFamilyType, protowire.VarintType)
		m = protowire.AppendVarint(m, uint64(dto.MetricType_COUNTER))
		var metric, num [32]byte
		for s := range 200 {
			instance := append(append(num[:0], "host-"...), byte('0'+s%7))
			path := strconv.AppendInt(append(num[len(instance):len(instance)], "/api/v1/items/"...), int64(s), 10)
			b := appendLabelPair(metric[:0], "instance", string(instance))
			b = appendLabelPair(b, "path", string(path))
			b = protowire.AppendTag(b, 3, protowire.BytesType) // counter
			b = protowire.AppendVarint(b, 9)
			b = protowire.AppendTag(b, 1, protowire.Fixed64Type)
			b = protowire.AppendFixed64(b, math.Float64bits(float64(s)))
			m = protowire.AppendTag(m, fieldFamilyMetric, protowire.BytesType)
			m = protowire.AppendBytes(m, b)
		}
		r.msg = m
		b := protowire.AppendBytes(r.store[:0], m)
		r.family++
		r.store, r.buf = b, b
		r.remaining -= len(r.buf)
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}
