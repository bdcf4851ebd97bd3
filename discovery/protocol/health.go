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
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"
)

// Exporter states as an agent reports them in heartbeats.
const (
	// ExporterUp: the agent's last relay of the exporter succeeded.
	ExporterUp = "up"
	// ExporterDown: the last relay failed (connection refused, timeout, an
	// error status, a body that does not parse...).
	ExporterDown = "down"
	// ExporterUnknown: nothing was relayed since the agent started, or the
	// agent is too old to report health.
	ExporterUnknown = "unknown"
)

// MaxExporterReasonLen bounds the reason of a failing exporter.
const MaxExporterReasonLen = 256

// ExporterHealth is what an agent last saw of one exporter it relays: the
// result of the last scrape that went through it. Times are the agent's.
type ExporterHealth struct {
	Name string `json:"name"`
	// State is ExporterUp, ExporterDown or ExporterUnknown.
	State string `json:"state"`
	// Reason says why a down exporter failed, on one line.
	Reason string `json:"reason,omitempty"`
	// Since is when State last changed.
	Since time.Time `json:"since,omitzero"`
	// LastResult is when the last relay of the exporter ended.
	LastResult time.Time `json:"last_result,omitzero"`
}

// ValidExporterState reports whether s is a state an agent may report.
func ValidExporterState(s string) bool {
	return s == ExporterUp || s == ExporterDown || s == ExporterUnknown
}

// ValidateExporterHealth checks the exporter health of a heartbeat. It is
// bounded like the exporter list of a registration, and the reason, which
// operators read on the status page and in a terminal, may hold no control
// characters.
func ValidateExporterHealth(hs []ExporterHealth) error {
	if len(hs) > MaxExporters {
		return fmt.Errorf("too many exporters: %d, at most %d", len(hs), MaxExporters)
	}
	seen := make(map[string]bool, len(hs))
	for _, h := range hs {
		if err := ValidateExporterName(h.Name); err != nil {
			return err
		}
		if seen[h.Name] {
			return fmt.Errorf("exporter %q is listed twice", h.Name)
		}
		seen[h.Name] = true
		if !ValidExporterState(h.State) {
			return fmt.Errorf("exporter %q: state %q is not one of up, down, unknown", h.Name, Truncate(h.State))
		}
		if err := validateReason(h.Reason); err != nil {
			return fmt.Errorf("exporter %q: %w", h.Name, err)
		}
		for _, t := range []time.Time{h.Since, h.LastResult} {
			if !t.IsZero() && (t.Year() < 2000 || t.Year() > 9999) {
				return fmt.Errorf("exporter %q: time %s is out of range", h.Name, t.UTC().Format(time.RFC3339))
			}
		}
	}
	return nil
}

func validateReason(r string) error {
	if len(r) > MaxExporterReasonLen {
		return fmt.Errorf("reason is longer than %d bytes", MaxExporterReasonLen)
	}
	if !utf8.ValidString(r) {
		return fmt.Errorf("reason is not valid UTF-8")
	}
	for _, c := range r {
		if unicode.IsControl(c) {
			return fmt.Errorf("reason contains a control character")
		}
	}
	return nil
}

// SanitizeReason makes an error message a valid reason: control characters
// become spaces and the text is cut to MaxExporterReasonLen bytes.
func SanitizeReason(s string) string {
	b := make([]byte, 0, min(len(s), MaxExporterReasonLen))
	for _, c := range s {
		if c == utf8.RuneError || unicode.IsControl(c) {
			c = ' '
		}
		if len(b)+utf8.RuneLen(c) > MaxExporterReasonLen {
			break
		}
		b = utf8.AppendRune(b, c)
	}
	return string(b)
}
