#!/usr/bin/env bash
# Rewrites fuzz/corpus/<target>/min-* after a fuzzing run: the fewest inputs
# that, added to the target's checked-in seeds, reach every edge that the
# seeds, the current min-* inputs and the scratch corpus of scripts/fuzz.sh
# reach together (libFuzzer's -set_cover_merge=1 on edge coverage). The
# seeds stay as they are. Commit what it leaves in fuzz/corpus.
#
#   ./scripts/fuzz-cpu.sh wire_rx        # the long run (one CPU-hour)
#   ./scripts/fuzz-minimize.sh wire_rx   # then this
#
# Uses the binaries scripts/fuzz.sh or fuzz-cpu.sh built (fuzz/target/.../release/<target>).
set -euo pipefail
cd "${FUZZ_DIR:-$(dirname "$0")/../fuzz}"

work="${FUZZ_WORK:-$PWD/target/fuzz-work}"
bins=target/x86_64-unknown-linux-gnu/release

if [ "$#" -eq 0 ]; then
    echo "usage: $0 TARGET..." >&2
    exit 2
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

for t in "$@"; do
    bin="$bins/$t"
    if [ ! -x "$bin" ]; then
        echo "fuzz-minimize: $bin is not built; run ./scripts/fuzz.sh $t first" >&2
        exit 1
    fi
    rm -rf "${tmp:?}"/*
    mkdir "$tmp/keep" "$tmp/old"
    # Seeds are every checked-in input not named min-* (seed-*, and
    # trace_dry_run's tap-seed-*/wire-seed-*).
    find corpus/"$t" -maxdepth 1 -type f ! -name 'min-*' -exec cp {} "$tmp/keep/" \;
    find corpus/"$t" -maxdepth 1 -name 'min-*' -exec cp {} "$tmp/old/" \;
    before=$(find "$tmp/old" -type f | wc -l)
    scratch=()
    [ -d "$work/$t" ] && scratch=("$work/$t")
    # New files land in keep/, named by the SHA-1 of their contents.
    if ! "$bin" -set_cover_merge=1 -use_counters=0 -use_cmp=0 \
        "$tmp/keep" "$tmp/old" "${scratch[@]}" >"$tmp/merge.log" 2>&1; then
        tail -n 20 "$tmp/merge.log" >&2
        echo "fuzz-minimize: $t: merge FAILED" >&2
        exit 1
    fi
    find corpus/"$t" -maxdepth 1 -name 'min-*' -delete
    after=0
    for f in "$tmp/keep"/*; do
        name=${f##*/}
        case "$name" in
        min-*) cp "$f" corpus/"$t"/"$name"; after=$((after + 1)) ;;
        # What the merge added, named by the SHA-1 of its contents.
        [0-9a-f][0-9a-f][0-9a-f][0-9a-f]*)
            if [ "${#name}" -eq 40 ]; then
                cp "$f" corpus/"$t"/min-"$name"
                after=$((after + 1))
            fi ;;
        *) ;;  # a seed
        esac
    done
    summary=$(grep -o 'MERGE-OUTER: [0-9]* new files.*' "$tmp/merge.log" | tail -n 1 || true)
    echo "fuzz-minimize: $t: min-* $before -> $after (${summary:-no summary})"
done
