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

// Package agent is the agent role of baremetal_sd: the daemon that runs next
// to node_exporter and other exporters on every host.
//
// It owns the host's identity: an ECDSA P-256 key generated in the state
// directory that never leaves the host, and the short-lived certificate the
// discovery server signs for it. It enrolls with an enrollment token, keeps
// its registration alive with heartbeats, renews the certificate at two
// thirds of its lifetime, re-registers when the registry lost it, and serves
// the relay (package relay) and its own telemetry over TLS with that
// certificate, to clients holding a certificate from the same CA.
//
// State directory layout:
//
//	key.pem         the private key (PKCS#8, 0600), created once and kept for
//	                the life of the state directory; the agent refuses to
//	                start when its group or others have access to it
//	cert.pem        the certificate chain (leaf, then CA), replaced atomically
//	ca.crt          the CA that signs Prometheus' client certificate
//	web-config.yml  the exporter-toolkit web config the agent serves with,
//	                written on start unless --web.config.file is given
//	agent.json      the agent id and what was last registered
//
// The key is reused for renewals and re-registrations. Because only cert.pem
// ever changes, and it changes by rename, a listener that reads the
// certificate and the key on each handshake can never see a mismatched pair.
package agent
