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
