#!/usr/bin/env bash
# Installs what the end-to-end tests start:
# - Debian packages: prometheus (Prometheus 2.42 and promtool),
#   prometheus-node-exporter, etcd-server and etcd-client (etcdctl), chromium
#   (headless, for the status page test);
# - Prometheus 3, which users run and Debian does not ship, built once from
#   the Go module proxy into a cache directory (about 5 minutes on 2 cores).
#
# Idempotent: when every package is installed it only says so, without
# apt-get update; a cached Prometheus 3 is reused. The packages ship daemons; tests start their own instances
# on loopback, so the packaged services must not run. A policy-rc.d guard
# keeps their postinst scripts from starting them, and any instance that
# started anyway is stopped through its pidfile.
set -euo pipefail

packages=(prometheus prometheus-node-exporter etcd-server etcd-client chromium systemd lintian cloud-init)
commands=(prometheus promtool prometheus-node-exporter etcd etcdctl chromium systemd-analyze lintian cloud-init)

log() { echo ">> $*"; }
die() { echo "install-test-deps: $*" >&2; exit 1; }

is_installed() {
	[[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == installed ]]
}

is_debian() {
	command -v dpkg-query >/dev/null && command -v apt-get >/dev/null
}

# Elsewhere the programs must already be on PATH.
check_commands_on_path() {
	local missing_cmds=() c
	for c in "${commands[@]}"; do
		command -v "$c" >/dev/null || missing_cmds+=("$c")
	done
	if ((${#missing_cmds[@]} > 0)); then
		die "not a Debian-based system (no apt-get); install these programs yourself: ${missing_cmds[*]}"
	fi
	log "test dependencies found on PATH (not a Debian system)"
}

find_missing() {
	missing=()
	for p in "${packages[@]}"; do
		is_installed "$p" || missing+=("$p")
	done
}
# Installs the Debian packages that are missing, with their services kept from starting.
install_debian_packages() {
	find_missing
	if ((${#missing[@]} == 0)); then
		log "test dependencies installed: ${packages[*]}"
		return 0
	fi

	sudo=()
	if ((EUID != 0)); then
		if command -v sudo >/dev/null; then
			sudo=(sudo)
		else
			die "missing packages ${missing[*]}; run as root or install sudo, or install them yourself: apt-get install ${missing[*]}"
		fi
	fi

	# Two test runs on one machine must not swap policy-rc.d under each other.
	# flock works on a read-only descriptor too, so a lock file another user
	# created still serves.
	lockfile=/tmp/baremetal_sd-install-test-deps.lock
	if [[ -e "$lockfile" && ! -w "$lockfile" ]]; then
		exec 9<"$lockfile"
	else
		exec 9>>"$lockfile"
	fi
	flock 9
	find_missing
	if ((${#missing[@]} == 0)); then
		log "test dependencies installed: ${packages[*]}"
		return 0
	fi

	# invoke-rc.d asks /usr/sbin/policy-rc.d whether a service may start; exit
	# code 101 means "no". Keep whatever was there before and put it back after.
	policy=/usr/sbin/policy-rc.d
	policy_backup="${policy}.baremetal_sd-backup"
	restore_policy() {
		if [[ -e "$policy_backup" ]]; then
			"${sudo[@]}" mv -f "$policy_backup" "$policy"
		else
			"${sudo[@]}" rm -f "$policy"
		fi
	}
	if [[ -e "$policy" ]]; then
		"${sudo[@]}" mv -f "$policy" "$policy_backup"
	fi
	trap restore_policy EXIT
	printf '#!/bin/sh\n# Written by baremetal_sd scripts/install-test-deps.sh while it installs packages.\nexit 101\n' |
		"${sudo[@]}" tee "$policy" >/dev/null
	"${sudo[@]}" chmod 0755 "$policy"

	log "installing missing test dependencies: ${missing[*]}"
	apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -qq -o DPkg::Lock::Timeout=300)
	"${apt[@]}" update
	"${apt[@]}" install -y --no-install-recommends "${missing[@]}"

	restore_policy
	trap - EXIT

	# Stop a daemon that a package installed just now started despite the guard
	# (for example where systemd runs and starts units itself). Only the
	# instance that the package's unit or pidfile names is touched, never a
	# test's own process, and never a service of a package installed before.
	stop_packaged() { # package unit pidfile executable
		local pkg=$1 unit=$2 pidfile=$3 exe=$4
		[[ " ${missing[*]} " == *" $pkg "* ]] || return 0
		if [[ -d /run/systemd/system ]] && systemctl is-active --quiet "$unit" 2>/dev/null; then
			log "stopping $unit, started by package $pkg"
			"${sudo[@]}" systemctl stop "$unit"
		fi
		if [[ -s "$pidfile" ]] && "${sudo[@]}" start-stop-daemon --status --pidfile "$pidfile" --exec "$exe"; then
			log "stopping $exe, started by package $pkg"
			"${sudo[@]}" start-stop-daemon --stop --quiet --oknodo --retry TERM/10/KILL/5 \
				--pidfile "$pidfile" --exec "$exe"
		fi
	}
	stop_packaged prometheus prometheus /run/prometheus/prometheus.pid /usr/bin/prometheus
	stop_packaged prometheus-node-exporter prometheus-node-exporter \
		/run/prometheus/prometheus-node-exporter.pid /usr/bin/prometheus-node-exporter
	stop_packaged etcd-server etcd /run/etcd.pid /usr/bin/etcd

	for p in "${packages[@]}"; do
		is_installed "$p" || die "package $p is still not installed"
	done
	for c in "${commands[@]}"; do
		command -v "$c" >/dev/null || die "command $c not found after installing ${packages[*]}"
	done
	log "test dependencies installed: ${packages[*]}"
}

# Prometheus 3. The module version v0.316.0 is the Prometheus 3 release that
# go.mod already depends on for its relabel and parser packages; keep the two
# in step. BAREMETAL_SD_PROMETHEUS3 (read by the e2e tests too) overrides
# where the binary lives.
prometheus3_module=github.com/prometheus/prometheus/cmd/prometheus
prometheus3_version=v0.316.0
prometheus3=${BAREMETAL_SD_PROMETHEUS3:-/var/cache/baremetal_sd-test/prometheus-${prometheus3_version}/prometheus}

install_prometheus3() {
	if [[ -x "$prometheus3" ]] && "$prometheus3" --version >/dev/null 2>&1; then
		log "prometheus 3 found: $prometheus3"
		return 0
	fi
	command -v "${GO:-go}" >/dev/null || die "go is needed to build Prometheus 3 ($prometheus3_module@$prometheus3_version)"
	local dir tmp
	dir=$(dirname "$prometheus3")
	mkdir -p "$dir" || die "cannot create $dir; set BAREMETAL_SD_PROMETHEUS3 to a writable path"
	tmp=$(mktemp -d "$dir/.build.XXXXXX")
	log "building prometheus 3 ($prometheus3_module@$prometheus3_version) into $prometheus3; this takes a few minutes once"
	# Outside any module, so that this repository's go.mod does not pin the
	# build's dependencies.
	if ! (cd "$tmp" && GOFLAGS= GOBIN="$tmp" "${GO:-go}" install -trimpath "$prometheus3_module@$prometheus3_version"); then
		rm -rf "$tmp"
		die "building Prometheus 3 failed"
	fi
	mv -f "$tmp/prometheus" "$prometheus3"
	rm -rf "$tmp"
	log "prometheus 3 built: $prometheus3"
}

if is_debian; then
	install_debian_packages
else
	check_commands_on_path
fi
install_prometheus3
