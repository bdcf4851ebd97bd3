#!/usr/bin/env bash
# Chooses which inputs of a fuzzing run to commit as corpus entries.
#
#   scripts/fuzz-corpus-select.sh PKG TARGET      e.g. ./relay FuzzSeriesCache
#
# `go test -fuzz` keeps every input that reached new coverage in its cache
# ($GOCACHE/fuzz/<module>/<pkg>/<TARGET>/), by its own edge counters. Most of
# them take known code along new paths; the ones worth committing cover
# statement blocks that the seeds and the committed corpus
# (PKG/testdata/fuzz/TARGET/) do not. The measure is the module's covered
# blocks (`go test -cover -coverpkg=./...`, one run of the target over its
# corpus): each cached input is measured alone, then the inputs are added in
# the order of the blocks they add, each kept only if it still adds some.
# The kept ones are left in PKG/testdata/fuzz/TARGET/ to commit.
#
# Prints the blocks covered before and after and how many inputs it kept.
set -euo pipefail

cd "$(dirname "$0")/.."
GO=${GO:-go}
pkg=${1:?usage: $0 PKG TARGET}
target=${2:?usage: $0 PKG TARGET}
pkg=./${pkg#./}
mod=$("$GO" list -m)
cache=$("$GO" env GOCACHE)/fuzz/$mod/${pkg#./}/$target
[[ "$pkg" == "./." || "$pkg" == "./" ]] && cache=$("$GO" env GOCACHE)/fuzz/$mod/$target
corpus=$PWD/${pkg#./}/testdata/fuzz/$target

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$GO" test -c -cover -coverpkg=./... -o "$work/fuzz.test" "$pkg" >/dev/null

# blocks prints how many statement blocks one run of the target over its
# corpus covers, or FAIL.
blocks() {
	if ! (cd "${pkg#./}" && "$work/fuzz.test" -test.run="^${target}\$" -test.coverprofile="$work/cover.out" >/dev/null 2>&1); then
		echo FAIL
		return
	fi
	tail -n +2 "$work/cover.out" | awk '$NF > 0 { print $1 }' | sort -u | wc -l
}

mkdir -p "$corpus"
base=$(blocks)
declare -A gain=()
for f in "$cache"/*; do
	[[ -e "$f" ]] || continue
	name=$(basename "$f")
	[[ -e "$corpus/$name" ]] && continue
	cp "$f" "$corpus/$name"
	b=$(blocks)
	rm "$corpus/$name"
	if [[ "$b" == FAIL ]]; then
		echo "$target: cached input $name fails the target: run it with go test -run=$target/$name"
		continue
	fi
	((b > base)) && gain[$name]=$((b - base))
done
cur=$base
kept=0
for name in $(for k in "${!gain[@]}"; do echo "${gain[$k]} $k"; done | sort -k1,1rn -k2 | awk '{ print $2 }'); do
	cp "$cache/$name" "$corpus/$name"
	b=$(blocks)
	if ((b > cur)); then
		cur=$b
		kept=$((kept + 1))
	else
		rm "$corpus/$name"
	fi
done
rmdir "$corpus" 2>/dev/null || true
echo "$target: $(ls "$cache" 2>/dev/null | wc -l) cached inputs; blocks covered $base -> $cur; kept $kept in ${corpus#"$PWD"/}"
