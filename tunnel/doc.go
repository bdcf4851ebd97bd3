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

// Package tunnel lets Prometheus scrape agents it cannot reach: the agent
// dials out to every server replica and keeps one multiplexed connection
// (yamux over the agent's mTLS session) to each; Prometheus sends CONNECT to
// a server with its client certificate, the server checks who asks and for
// which agent and port, opens a stream to that agent and copies bytes. The
// TLS session inside the stream runs from Prometheus to the agent's own
// listener, so the server forwards bytes it cannot read.
//
// Server is the server half (the tunnel endpoint and the CONNECT proxy),
// Client the agent half. The agent runs hashicorp/yamux; the server's end
// of each tunnel is internal/mux, which speaks yamux' protocol with less
// memory per idle tunnel. ParseTarget parses the authority of a CONNECT
// request, which comes from the network.
package tunnel
