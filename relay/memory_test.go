//go:build !race

// The race detector multiplies memory use and time, so this bound is only
// checked in normal builds; `make test` runs them too.

package relay

import (
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestRelay_MemoryBoundedOn100MB relays a 100 MB exposition and samples
// the heap while it streams: the peak must stay far below the payload.
func TestRelay_MemoryBoundedOn100MB(t *testing.T) {
	const payload = 100 << 20
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)

	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
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
	}()
	p := newPipeline("big", "exporter", nil, DefaultMaxLineBytes, DefaultMaxFrameBytes)
	for _, out := range []Format{FormatText, FormatProtobuf} {
		if err := p.relay(&repeatReader{remaining: payload}, FormatText, "text/plain", out, io.Discard); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	grown := int64(peak.Load()) - int64(base.HeapInuse)
	t.Logf("heap in use grew by at most %.1f MiB while relaying 2 x 100 MiB", float64(grown)/(1<<20))
	if grown > 48<<20 {
		t.Fatalf("heap grew by %d MiB relaying 100 MiB: memory is not bounded by one family", grown>>20)
	}
}
