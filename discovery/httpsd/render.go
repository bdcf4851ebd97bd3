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

package httpsd

import (
	"net"
	"strconv"
	"unicode/utf8"

	"github.com/prometheus/prometheus/model/labels"

	"github.com/baremetal-sd/baremetal_sd/discovery/protocol"
	"github.com/baremetal-sd/baremetal_sd/discovery/registry"
)

// appendAgentGroups appends the target groups of one agent (its own metrics,
// then one per exporter), comma separated, to buf.
func appendAgentGroups(buf []byte, a *registry.Record, f Filter) []byte {
	host := a.Address
	if a.Tunnel {
		// The server routes CONNECT by hostname, which the agent's
		// certificate carries; a tunneled host's address is often a private
		// one that is not unique across sites.
		host = a.Hostname
	}
	target := net.JoinHostPort(host, strconv.Itoa(int(a.Port)))
	if f.matchExporter(protocol.AgentExporterName) {
		buf = appendGroup(buf, a, target, protocol.AgentExporterName, protocol.AgentMetricsPath)
	}
	for _, e := range a.Exporters {
		if f.matchExporter(e.Name) {
			buf = appendGroup(buf, a, target, e.Name, e.Path)
		}
	}
	return buf
}

func appendGroup(buf []byte, a *registry.Record, target, exporter, path string) []byte {
	if len(buf) > 0 {
		buf = append(buf, ',')
	}
	buf = append(buf, `{"targets":[`...)
	buf = appendJSONString(buf, target)
	buf = append(buf, `],"labels":{`...)
	// Keys in byte order, so the output is stable and diffable:
	// __meta_baremetal_sd_* < __metrics_path__ < __scheme__.
	buf = appendLabel(buf, protocol.MetaAddress, a.Address, false)
	buf = appendLabel(buf, protocol.MetaAgentID, a.ID, true)
	buf = appendLabel(buf, protocol.MetaExporter, exporter, true)
	buf = appendLabel(buf, protocol.MetaHostname, a.Hostname, true)
	// Labels are sorted by name already.
	a.Labels.Range(func(l labels.Label) {
		buf = append(buf, `,"`+protocol.MetaLabelPrefix...)
		buf = appendJSONStringBody(buf, l.Name)
		buf = append(buf, `":`...)
		buf = appendJSONString(buf, l.Value)
	})
	buf = appendLabel(buf, protocol.MetaMaintenance, strconv.FormatBool(a.Maintenance), true)
	if a.Tunnel {
		buf = appendLabel(buf, protocol.MetaTunnel, "true", true)
	}
	buf = appendLabel(buf, "__metrics_path__", path, true)
	buf = appendLabel(buf, "__scheme__", "https", true)
	return append(buf, "}}"...)
}

func appendLabel(buf []byte, name, value string, comma bool) []byte {
	if comma {
		buf = append(buf, ',')
	}
	buf = appendJSONString(buf, name)
	buf = append(buf, ':')
	return appendJSONString(buf, value)
}

func appendJSONString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	buf = appendJSONStringBody(buf, s)
	return append(buf, '"')
}

const hexDigits = "0123456789abcdef"

// appendJSONStringBody escapes s for a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json does; registration validation refuses it anyway.
func appendJSONStringBody(buf []byte, s string) []byte {
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			switch {
			case b == '"' || b == '\\':
				buf = append(buf, '\\', b)
			case b < 0x20:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			default:
				buf = append(buf, b)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			buf = append(buf, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			buf = append(buf, `\u202`...)
			buf = append(buf, hexDigits[r&0xf])
		default:
			buf = append(buf, s[i:i+size]...)
		}
		i += size
	}
	return buf
}
