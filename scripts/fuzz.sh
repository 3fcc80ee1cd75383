#!/usr/bin/env bash
# Coverage-guided fuzzing of every target in fuzz/Cargo.toml, bounded in
# time, on the stable toolchain. Fails (after running the others) if any
# target crashed, printing each reproducer's path.
#
#   ./scripts/fuzz.sh                    # every target, 60 s each (45 s
#                                        # each when there are more than 12)
#   FUZZ_SECONDS=300 ./scripts/fuzz.sh   # longer
#   ./scripts/fuzz.sh wire_rx dns_query  # only these targets
#   FUZZ_DIR=path/to/fuzz ./scripts/fuzz.sh   # another copy of the crate
#
# Stable works because `--sanitizer none` makes cargo-fuzz (0.13) pass only
# -C flags to rustc (sancov passes, `--cfg fuzzing`); the default
# AddressSanitizer needs nightly's -Zsanitizer. Safe Rust needs no ASan to
# catch what matters here: panics, overflows (debug assertions are on) and
# out-of-bounds indexing abort the run and leave a reproducer.
#
# Each target starts from its checked-in seeds (fuzz/corpus/<target>, read
# only) and writes what it finds to a scratch corpus (FUZZ_WORK, default
# fuzz/target/fuzz-work/<target>, kept between runs, ignored by git).
# Crash reproducers land in fuzz/artifacts/<target>/; to keep one as a
# regression case, copy it to fuzz/corpus/<target>/seed-<what-it-is>.
set -euo pipefail
cd "${FUZZ_DIR:-$(dirname "$0")/../fuzz}"
export PATH="$HOME/.cargo/bin:$PATH"

work="${FUZZ_WORK:-$PWD/target/fuzz-work}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    # Every [[bin]] in fuzz/Cargo.toml, as cargo-fuzz reads them.
    mapfile -t targets < <(cargo fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
    echo "fuzz: no targets" >&2
    exit 1
fi
# CI's budget: about 12 minutes of fuzzing in all.
if [ "${#targets[@]}" -gt 12 ]; then default=45; else default=60; fi
seconds="${FUZZ_SECONDS:-$default}"

# One build; the runs below then find everything up to date.
mkdir -p "$work"
echo "fuzz: building ${#targets[@]} targets (log: $work/build.log)"
if ! (
    if [ "$#" -gt 0 ]; then
        for t in "${targets[@]}"; do cargo fuzz build --sanitizer none "$t" || exit 1; done
    else
        cargo fuzz build --sanitizer none
    fi
) >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    echo "fuzz: build FAILED" >&2
    exit 1
fi

failed=()
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "artifacts/$t"
    log="$work/$t.log"
    echo "fuzz: $t for ${seconds} s"
    # -timeout: an input taking longer than this is a hang, and fails too.
    if ! cargo fuzz run "$t" --sanitizer none "$work/$t" "corpus/$t" -- \
        -max_total_time="$seconds" -timeout=60 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        artifact=$(grep -o 'Test unit written to [^ ]*' "$log" | tail -n 1 | cut -d' ' -f5-)
        echo "fuzz: $t FAILED; reproducer: ${artifact:-none written (see $log)}" >&2
        echo "fuzz: reproduce with: cd fuzz && cargo fuzz run $t --sanitizer none ${artifact:-}" >&2
        failed+=("$t")
        continue
    fi
    # The last status line: executions, coverage (cov), features (ft).
    summary=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    echo "fuzz: $t ok: ${summary:-no status line}"
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "fuzz: ${#failed[@]} of ${#targets[@]} targets crashed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
