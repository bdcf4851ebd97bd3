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
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Bounds on what an agent may register; they keep one record small and the
// http_sd response of a large fleet predictable.
const (
	MaxLabels          = 64
	MaxLabelNameLen    = 128
	MaxLabelValueLen   = 1024
	MaxExporters       = 64
	MaxExporterNameLen = 64
	MaxPathLen         = 256
	MaxAgentIDLen      = 64
	MaxStatusLen       = 256
)

// ValidateHostname checks an RFC 1123 host name.
func ValidateHostname(h string) error {
	if h == "" {
		return fmt.Errorf("hostname is empty")
	}
	if len(h) > 253 {
		return fmt.Errorf("hostname is longer than 253 characters")
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("hostname %q: each dot-separated part must have 1 to 63 characters", Truncate(h))
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("hostname %q: a part may not start or end with '-'", Truncate(h))
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !isHostnameChar(c) {
				return fmt.Errorf("hostname %q: invalid character %q", Truncate(h), c)
			}
		}
	}
	return nil
}

// ValidateAddress checks a scrape address: an IP literal or a host name.
func ValidateAddress(a string) error {
	if ip, err := netip.ParseAddr(a); err == nil {
		if ip.Zone() != "" {
			return fmt.Errorf("address %q: zones are not supported", Truncate(a))
		}
		if ip.IsUnspecified() || ip.IsMulticast() {
			return fmt.Errorf("address %q is not a unicast address", a)
		}
		return nil
	}
	if err := ValidateHostname(a); err != nil {
		return fmt.Errorf("address is neither an IP nor a valid hostname: %w", err)
	}
	return nil
}

// ValidateLabelName checks an agent label name. Names must be valid under
// Prometheus' classic rules because they become part of a meta label name,
// and may not start with "__", which Prometheus reserves.
func ValidateLabelName(n string) error {
	if n == "" {
		return fmt.Errorf("label name is empty")
	}
	if len(n) > MaxLabelNameLen {
		return fmt.Errorf("label name is longer than %d characters", MaxLabelNameLen)
	}
	if strings.HasPrefix(n, "__") {
		return fmt.Errorf("label name %q: names starting with __ are reserved", n)
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !isLetter(c) && c != '_' && (i == 0 || !isDigit(c)) {
			return fmt.Errorf("label name %q is invalid: use [a-zA-Z_][a-zA-Z0-9_]*", Truncate(n))
		}
	}
	return nil
}

// ValidateLabels checks an agent's labels.
func ValidateLabels(labels map[string]string) error {
	if len(labels) > MaxLabels {
		return fmt.Errorf("too many labels: %d, at most %d", len(labels), MaxLabels)
	}
	for k, v := range labels {
		if err := ValidateLabelName(k); err != nil {
			return err
		}
		if len(v) > MaxLabelValueLen {
			return fmt.Errorf("label %q: value is longer than %d bytes", k, MaxLabelValueLen)
		}
		if !utf8.ValidString(v) {
			return fmt.Errorf("label %q: value is not valid UTF-8", k)
		}
	}
	return nil
}

// ValidateExporterName checks an exporter name, which becomes part of a URL
// path and a label value.
func ValidateExporterName(n string) error {
	if n == "" || len(n) > MaxExporterNameLen {
		return fmt.Errorf("exporter name must have 1 to %d characters", MaxExporterNameLen)
	}
	if n == AgentExporterName {
		return fmt.Errorf("exporter name %q is reserved for the agent's own metrics", n)
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !isHostnameChar(c) && c != '_' {
			return fmt.Errorf("exporter name %q is invalid: use [a-zA-Z0-9_-]", Truncate(n))
		}
	}
	return nil
}

// ValidateExporters checks the exporter list of a registration.
func ValidateExporters(exps []Exporter) error {
	if len(exps) > MaxExporters {
		return fmt.Errorf("too many exporters: %d, at most %d", len(exps), MaxExporters)
	}
	seen := make(map[string]bool, len(exps))
	for _, e := range exps {
		if err := ValidateExporterName(e.Name); err != nil {
			return err
		}
		if seen[e.Name] {
			return fmt.Errorf("exporter %q is listed twice", e.Name)
		}
		seen[e.Name] = true
		if len(e.Path) > MaxPathLen || !strings.HasPrefix(e.Path, "/") {
			return fmt.Errorf("exporter %q: path must start with / and have at most %d characters", e.Name, MaxPathLen)
		}
		for i := 0; i < len(e.Path); i++ {
			if c := e.Path[i]; c <= ' ' || c >= 0x7f || c == '?' || c == '#' || c == '%' || c == '\\' {
				return fmt.Errorf("exporter %q: path contains an invalid character", e.Name)
			}
		}
	}
	return nil
}

// ValidateAgentID checks an agent id chosen by an operator for a token.
func ValidateAgentID(id string) error {
	if id == "" || len(id) > MaxAgentIDLen {
		return fmt.Errorf("agent id must have 1 to %d characters", MaxAgentIDLen)
	}
	if id == "self" {
		// /api/v1/agents/self is the calling agent, so an agent named
		// "self" could never be revoked.
		return errors.New(`agent id "self" is reserved`)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !isHostnameChar(c) && c != '_' && c != '.' {
			return fmt.Errorf("agent id %q is invalid: use [a-zA-Z0-9._-]", Truncate(id))
		}
	}
	return nil
}

// ValidateRegistration checks everything in a registration but the CSR.
func ValidateRegistration(req *RegisterRequest) error {
	if err := ValidateHostname(req.Hostname); err != nil {
		return err
	}
	if req.Address != "" {
		if err := ValidateAddress(req.Address); err != nil {
			return err
		}
	}
	if req.Port < 1 || req.Port > 65535 {
		return fmt.Errorf("port %d is out of range 1-65535", req.Port)
	}
	if err := ValidateLabels(req.Labels); err != nil {
		return err
	}
	return ValidateExporters(req.Exporters)
}

// Truncate shortens untrusted input quoted in error messages and logs.
func Truncate(s string) string {
	const limit = 64
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "..."
}

// isHostnameChar reports whether c may appear in an RFC 1123 host name label.
func isHostnameChar(c byte) bool { return isLetter(c) || isDigit(c) || c == '-' }

func isLetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
