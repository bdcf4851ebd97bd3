# Copyright The baremetal_sd Authors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
# http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

# Targets not defined here (build, tarball, crossbuild, lint, vet, format,
# style, promu, golangci-lint) come from Makefile.common as common-<target>.
include Makefile.common

.DEFAULT_GOAL := all

# How long each fuzz target runs in `make test` and `make fuzz`.
FUZZTIME ?= 5s
# Per test binary; the end-to-end tests start real daemons.
GOTEST_TIMEOUT ?= 20m

export GO FUZZTIME GOTEST_TIMEOUT

.PHONY: all
all: style build test

# The one test entry point, also run by .ci/run: installs the Debian packages
# the end-to-end tests start (when missing), then go vet, the unit and
# end-to-end tests under the race detector, and a short fuzz pass.
.PHONY: test
test:
	@scripts/test.sh

.PHONY: test-deps
test-deps:
	@scripts/install-test-deps.sh

.PHONY: fuzz
fuzz:
	@scripts/fuzz.sh

# The chaos and soak harness of RELIABILITY.md (e2e/chaos_test.go): both
# scenarios with CHAOS_DURATION of faults each, after a minute of warm-up.
# `make test` runs its short form (about two minutes, -race); the issue's
# long form is `make chaos CHAOS_DURATION=1h`. Needs root (network
# namespaces, a tmpfs mount). The long form runs production builds: it
# measures memory slopes and answer times, which the race detector's
# shadow memory and slowdown would distort; CHAOS_RACE=true runs it with
# -race. The tables are in the -v output; CHAOS_REPORT_DIR, if set, also
# receives them as one file per scenario.
CHAOS_DURATION ?= 20m
CHAOS_TIMEOUT ?= 3h
CHAOS_REPORT_DIR ?=
CHAOS_RACE ?= false

.PHONY: chaos
chaos:
	CHAOS_DURATION=$(CHAOS_DURATION) CHAOS_REPORT_DIR=$(if $(CHAOS_REPORT_DIR),$(abspath $(CHAOS_REPORT_DIR))) \
		$(GO) test $(if $(filter true,$(CHAOS_RACE)),-race) -count=1 -timeout $(CHAOS_TIMEOUT) -run '^TestChaos_' -v ./e2e/

# The load generator that bench/*.sh run; not part of the release binary.
.PHONY: build-bench
build-bench:
	$(GO) build -o baremetal_sd-bench ./bench/cmd/baremetal_sd-bench

.PHONY: clean
clean: common-clean
	rm -f baremetal_sd baremetal_sd-bench
