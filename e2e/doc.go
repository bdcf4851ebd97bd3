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
