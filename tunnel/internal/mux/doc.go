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

// Package mux is the server's end of a tunnel: a multiplexing session that
// speaks the wire protocol of github.com/hashicorp/yamux (spec.md in its
// repository), whose Server the agent runs on the other end, and that only
// opens streams, never accepts them.
//
// It exists for memory. A server holds one session per agent, 10,000 or
// more of them idle, and yamux' session costs about 13 KiB of that per
// tunnel: a 4 KiB read buffer of its own on top of the one the TLS
// connection keeps for a record, two goroutines (receive and send loops,
// 7.5 KiB of stacks) and 1.4 KiB of channels and maps (BENCHMARKS.md, "Where
// an idle tunnel's memory goes"). A Session here has one goroutine, which
// reads frame headers straight from the connection, and writes a frame
// directly to the connection, under a mutex, from the goroutine that sends
// it. It holds no buffer while idle: a stream's received data sits in
// pooled 16 KiB chunks that go back to the pool once read, and a session
// without open streams has no map of them.
//
// Flow control is yamux': every stream starts with a 256 KiB window each
// way; the session advertises its larger Config.Window when it opens a
// stream and tops the window up as the stream's reader takes data. A peer
// that breaks the protocol (a frame beyond the window, for a stream that was
// never opened, of an unknown version or type) ends the session; every
// such violation is reported to Config.Violation with a reason from
// Reasons.
package mux
