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

package tunnel

import (
	"net"
	"strconv"
	"strings"
	"testing"
)

func TestParseTarget_Cases(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Target
		err  bool
	}{
		{in: "host-a:9100", want: Target{"host-a", 9100}},
		{in: "Host-A.example.org:9100", want: Target{"host-a.example.org", 9100}},
		{in: "192.0.2.7:1", want: Target{"192.0.2.7", 1}},
		{in: "[2001:DB8::1]:65535", want: Target{"2001:db8::1", 65535}},
		{in: "host-a", err: true},
		{in: ":9100", err: true},
		{in: "host-a:0", err: true},
		{in: "host-a:65536", err: true},
		{in: "host-a:09100", err: true},
		{in: "host-a:+80", err: true},
		{in: "host-a:80/x", err: true},
		{in: "user@host-a:80", err: true},
		{in: "[host-a]:80", err: true},
		{in: "host a:80", err: true},
		{in: strings.Repeat("a", 300) + ":80", err: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseTarget(tc.in)
			if (err != nil) != tc.err || (err == nil && got != tc.want) {
				t.Fatalf("ParseTarget(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
			}
		})
	}
}

// FuzzParseTarget feeds CONNECT authorities from the network to the
// parser: it must never panic, and what it accepts must be a plain
// host:port that parses back to itself.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"host-a:9100", "[::1]:80", "192.0.2.7:443", "a:0", "[x]:1", "h:+1", ":", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseTarget(s)
		if err != nil {
			return
		}
		if got.Port < 1 || got.Port > 65535 || got.Host == "" {
			t.Fatalf("ParseTarget(%q) accepted %v", s, got)
		}
		host, port, err := net.SplitHostPort(got.String())
		if err != nil || host != got.Host || port != strconv.Itoa(got.Port) {
			t.Fatalf("ParseTarget(%q) = %v does not round-trip", s, got)
		}
		again, err := ParseTarget(got.String())
		if err != nil || again != got {
			t.Fatalf("ParseTarget(%q) = %v, but its own form parses as %v, %v", s, got, again, err)
		}
	})
}
