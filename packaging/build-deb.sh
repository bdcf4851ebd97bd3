#!/usr/bin/env bash
# Builds the baremetal-sd Debian package of one architecture with nfpm.
#
#   packaging/build-deb.sh ARCH BINARY OUTDIR
#
# ARCH is a Debian architecture (amd64, arm64), BINARY the baremetal_sd
# built for it. The man page and the shell completion come from the binary
# itself (kingpin writes both); when BINARY cannot run on this machine,
# HOST_BINARY names one that can (the same source, any architecture).
# Environment: NFPM (default .tools/bin/nfpm), VERSION (default: the VERSION
# file), RELEASE (the Debian revision, default 1), MAINTAINER.
set -euo pipefail

cd "$(dirname "$0")/.."
if (($# != 3)); then
	echo "usage: $0 ARCH BINARY OUTDIR" >&2
	exit 2
fi
export ARCH=$1
BINARY=$(realpath "$2")
OUTDIR=$3
HOST_BINARY=$(realpath "${HOST_BINARY:-$2}")
NFPM=${NFPM:-.tools/bin/nfpm}
export BINARY
export VERSION=${VERSION:-$(cat VERSION)}
export RELEASE=${RELEASE:-1}
export MAINTAINER=${MAINTAINER:-The baremetal_sd Authors <baremetal-sd@users.noreply.github.com>}
# Reproducible: every date in the package is the last commit's.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/baremetal_sd-deb.XXXXXX")
trap 'rm -rf "${STAGE}"' EXIT
export STAGE

# kingpin's man page puts the multi-line version text into .TH and names
# the program without a description; a man page needs both right (whatis,
# lintian). Replace the title line and the NAME section's body.
description=$("${HOST_BINARY}" --help 2>&1 | sed -n 3p)
"${HOST_BINARY}" --help-man |
	awk -v version="${VERSION}" -v date="$(date -u -d "@${SOURCE_DATE_EPOCH}" +%Y-%m-%d)" -v desc="${description}" '
		!started && /^\.SH "NAME"/ {
			printf ".TH BAREMETAL_SD 1 \"%s\" \"baremetal_sd %s\" \"User Commands\"\n", date, version
			started = 1
		}
		!started { next }
		name_next { printf "baremetal_sd \\- %s\n", desc; name_next = 0; next }
		/^\.SH "NAME"/ { name_next = 1 }
		{ print }
	' | gzip -9n >"${STAGE}/baremetal_sd.1.gz"
"${HOST_BINARY}" --completion-script-bash >"${STAGE}/baremetal_sd.bash"

gzip -9nc CHANGELOG.md >"${STAGE}/changelog.gz"
cat >"${STAGE}/changelog.Debian" <<CHANGELOG
baremetal-sd (${VERSION}-${RELEASE}) unstable; urgency=medium

  * Package of baremetal_sd ${VERSION}; its changes are in changelog.gz.

 -- ${MAINTAINER}  $(date -u -R -d "@${SOURCE_DATE_EPOCH}")
CHANGELOG
gzip -9n "${STAGE}/changelog.Debian"

mkdir -p "${OUTDIR}"
"${NFPM}" package --config packaging/nfpm.yaml --packager deb --target "${OUTDIR}/"
