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
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
)

// maxTargetLen bounds the authority of a CONNECT request: a 253-byte host
// name, a colon and a port, with room for IPv6 brackets.
const maxTargetLen = 262

// Target is the host and port a CONNECT request asks for.
type Target struct {
	// Host is lower case; an IPv6 address has no brackets.
	Host string
	Port int
}

// ParseTarget parses the authority of a CONNECT request, "host:port". It
// accepts host names (letters, digits, '-', '.', '_') and IP addresses, and
// ports 1-65535 written as plain decimal numbers; anything else is an error
// that is safe to show the client.
func ParseTarget(s string) (Target, error) {
	if len(s) > maxTargetLen {
		return Target{}, fmt.Errorf("target is longer than %d bytes", maxTargetLen)
	}
	host, portStr, err := net.SplitHostPort(s)
	if err != nil {
		return Target{}, errors.New("target is not host:port")
	}
	port, err := parsePort(portStr)
	if err != nil {
		return Target{}, err
	}
	if host == "" {
		return Target{}, errors.New("target has no host")
	}
	if ip := net.ParseIP(host); ip != nil {
		// One spelling per address, so that lookups compare equal.
		return Target{Host: ip.String(), Port: port}, nil
	}
	if strings.HasPrefix(s, "[") {
		return Target{}, errors.New("target's brackets hold no IP address")
	}
	if len(host) > 253 {
		return Target{}, errors.New("target host name is longer than 253 bytes")
	}
	for i := 0; i < len(host); i++ {
		c := host[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '-' && c != '.' && c != '_' {
			return Target{}, fmt.Errorf("target host has a character %q that no host name has", c)
		}
	}
	return Target{Host: strings.ToLower(host), Port: port}, nil
}

// parsePort accepts 1-65535 as plain decimal digits: strconv alone would
// take "+80" and leading zeros would give one port several spellings.
func parsePort(s string) (int, error) {
	if s == "" || len(s) > 5 || s[0] == '0' {
		return 0, errors.New("target port must be a number from 1 to 65535")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, errors.New("target port must be a number from 1 to 65535")
		}
	}
	p, err := strconv.Atoi(s)
	if err != nil || p > 65535 {
		return 0, errors.New("target port must be a number from 1 to 65535")
	}
	return p, nil
}

// String is the target as host:port.
func (t Target) String() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }
