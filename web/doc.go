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

// Package web serves HTTP with exporter-toolkit's web configuration: the
// same file format, defaults and semantics (TLS, client certificates, basic
// auth, headers, rate limit, HTTP/2 switch, systemd socket activation), so
// operators configure baremetal_sd exactly like node_exporter. Unlike the
// toolkit it parses the file and loads the certificates only when one of
// the files changed (by modification time, size and inode), instead of on
// every request and handshake; rotated certificates are still picked up on
// the next handshake. Its rate limit applies per client (verified client
// certificate, else source address) instead of to the whole server.
package web
