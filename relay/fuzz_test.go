package relay

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"github.com/prometheus/common/model"
	"google.golang.org/protobuf/encoding/protodelim"
)

// fuzzRelay runs the pipeline over arbitrary input for every output
// format. It must never panic; errors are fine. Limits are small so that
// no input can make it allocate much.
func fuzzRelay(_ *testing.T, data []byte, in Format, ct string) {
	for _, out := range []Format{FormatText, FormatOpenMetrics, FormatProtobuf} {
		p := newPipeline("fuzz", "exporter", nil, limits{maxLine: 4096, maxFrame: 1 << 20, maxMetric: 1 << 20})
		body := &capReader{r: bytes.NewReader(data), max: 1 << 20}
		_ = p.relay(body, in, ct, out, model.UnderscoreEscaping, io.Discard)
	}
}

func FuzzRelayText(f *testing.F) {
	f.Add([]byte(richText))
	f.Add([]byte("# TYPE a counter\na 1\n# TYPE a gauge\na 2\n"))
	f.Add([]byte("{\"utf8.name\",a=\"b\"} 1\n"))
	f.Add([]byte("a{b=\"\\x\"} 1\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRelay(t, data, FormatText, "text/plain; version=0.0.4")
	})
}

func FuzzRelayOpenMetrics(f *testing.F) {
	f.Add([]byte(richOM))
	f.Add([]byte("# TYPE a histogram\na_bucket{le=\"x\"} 1\n# EOF\n"))
	f.Add([]byte("a_total 1 # {} 1\n# EOF\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRelay(t, data, FormatOpenMetrics, ContentTypeOpenMetrics)
	})
}

func FuzzRelayProtobuf(f *testing.F) {
	var buf bytes.Buffer
	_, _ = protodelim.MarshalTo(&buf, nativeHistogramFamily())
	f.Add(buf.Bytes())
	f.Add(binary.AppendUvarint(nil, 64<<30))
	f.Add([]byte{0x05, 0x0a, 0x01, 'a', 0x18, 0x09})
	f.Fuzz(func(t *testing.T, data []byte) {
		fuzzRelay(t, data, FormatProtobuf, ContentTypeProtobuf)
	})
}
