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

package protocol

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestValidateExporterHealth_Bounds(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	ok := ExporterHealth{Name: "node", State: ExporterDown, Reason: "connect: connection refused", Since: now, LastResult: now}
	many := make([]ExporterHealth, MaxExporters+1)
	for i := range many {
		many[i] = ExporterHealth{Name: fmt.Sprintf("e%d", i), State: ExporterUp}
	}
	with := func(f func(h *ExporterHealth)) []ExporterHealth {
		h := ok
		f(&h)
		return []ExporterHealth{h}
	}
	tests := []struct {
		name string
		in   []ExporterHealth
		want string // substring of the error, "" for valid
	}{
		{"none", nil, ""},
		{"valid", []ExporterHealth{ok}, ""},
		{"unknown without times", with(func(h *ExporterHealth) { *h = ExporterHealth{Name: "node", State: ExporterUnknown} }), ""},
		{"longest reason", with(func(h *ExporterHealth) { h.Reason = strings.Repeat("é", MaxExporterReasonLen/2) }), ""},
		{"too many", many, "too many exporters"},
		{"twice", []ExporterHealth{ok, ok}, "listed twice"},
		{"bad name", with(func(h *ExporterHealth) { h.Name = "a/b" }), "invalid"},
		{"reserved name", with(func(h *ExporterHealth) { h.Name = AgentExporterName }), "reserved"},
		{"bad state", with(func(h *ExporterHealth) { h.State = "healthy" }), "not one of"},
		{"empty state", with(func(h *ExporterHealth) { h.State = "" }), "not one of"},
		{"reason too long", with(func(h *ExporterHealth) { h.Reason = strings.Repeat("x", MaxExporterReasonLen+1) }), "longer than"},
		{"reason not UTF-8", with(func(h *ExporterHealth) { h.Reason = "\xff" }), "UTF-8"},
		{"reason with a newline", with(func(h *ExporterHealth) { h.Reason = "a\nb" }), "control character"},
		{"reason with an escape", with(func(h *ExporterHealth) { h.Reason = "\x1b[2J" }), "control character"},
		{"time before 2000", with(func(h *ExporterHealth) { h.Since = time.Unix(0, 0) }), "out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateExporterHealth(tt.in)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("ValidateExporterHealth = %v, want nil", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Fatalf("ValidateExporterHealth = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestSanitizeReason_MakesValidReasons(t *testing.T) {
	tests := map[string]string{
		"upstream answered 500 Internal Server Error": "upstream answered 500 Internal Server Error",
		"line one\nline two\r":                        "line one line two ",
		"bad \xff byte":                               "bad   byte",
		strings.Repeat("x", 300):                      strings.Repeat("x", MaxExporterReasonLen),
		strings.Repeat("é", 200):                      strings.Repeat("é", MaxExporterReasonLen/2),
	}
	for in, want := range tests {
		got := SanitizeReason(in)
		if got != want {
			t.Errorf("SanitizeReason(%q) = %q, want %q", in, got, want)
		}
		if err := validateReason(got); err != nil {
			t.Errorf("SanitizeReason(%q) = %q, which is invalid: %v", in, got, err)
		}
	}
}

// FuzzHeartbeatRequest decodes heartbeat bodies as the server does and
// checks that validation never panics, that what it accepts stays within
// the bounds, and that a sanitized reason always validates.
func FuzzHeartbeatRequest(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"status":"ok","exporters":[{"name":"node","state":"down","reason":"connect: refused","since":"2026-12-06T12:00:00Z","last_result":"2026-12-06T12:01:00Z"}]}`))
	f.Add([]byte(`{"exporters":[{"name":"node","state":"up"},{"name":"node","state":"up"}]}`))
	f.Add([]byte(`{"exporters":[{"name":"x","state":"unknown","reason":"\u001b[2J"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.DisallowUnknownFields()
		var req HeartbeatRequest
		if err := dec.Decode(&req); err != nil {
			return
		}
		if err := ValidateExporterHealth(req.Exporters); err != nil {
			return
		}
		if len(req.Exporters) > MaxExporters {
			t.Fatalf("accepted %d exporters", len(req.Exporters))
		}
		for _, h := range req.Exporters {
			if len(h.Reason) > MaxExporterReasonLen || !utf8.ValidString(h.Reason) || !ValidExporterState(h.State) {
				t.Fatalf("accepted %+v", h)
			}
			if err := validateReason(SanitizeReason(string(body))); err != nil {
				t.Fatalf("sanitized reason is invalid: %v", err)
			}
		}
	})
}
