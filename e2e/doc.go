// Package e2e holds the end-to-end tests of baremetal_sd. They build the
// real binary once (TestMain), start it as a separate process on loopback
// ports, talk to it over TLS exactly as agents, operators and Prometheus do,
// and drive a real Prometheus (the Debian package's /usr/bin/prometheus;
// scripts/install-test-deps.sh installs it) against it.
//
// The package has no non-test code besides this comment: everything lives in
// _test.go files. main_test.go holds the shared helpers (processes, HTTP
// clients, the CLI, test-side enrollment and Prometheus); each other file
// covers one role.
package e2e
