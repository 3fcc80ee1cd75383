#!/usr/bin/env bash
# Long fuzzing runs measured in CPU time, not wall time (issue 13's "one
# CPU-hour per target"; not run in CI). The targets run side by side, each
# until its own process has used FUZZ_CPU_SECONDS of CPU (user + system,
# default 3660), then it is interrupted (SIGINT: libFuzzer prints its final
# stats and exits 72). With more targets than cores, or other work on the
# machine, the wall time stretches but every target still gets its hour.
#
#   ./scripts/fuzz-cpu.sh mgmt_frame dns_query lb_nat
#   FUZZ_CPU_SECONDS=600 ./scripts/fuzz-cpu.sh mesh
#
# Same corpora as scripts/fuzz.sh: seeds from fuzz/corpus/<target> (read
# only), finds in fuzz/target/fuzz-work/<target>, crashes in
# fuzz/artifacts/<target>/. Prints one line per target: CPU seconds and
# libFuzzer's last status line (executions, cov, ft, corpus). Exits 1 if
# any target crashed. Afterwards, scripts/fuzz-minimize.sh folds the finds
# into the checked-in min-* inputs.
set -euo pipefail
cd "${FUZZ_DIR:-$(dirname "$0")/../fuzz}"
export PATH="$HOME/.cargo/bin:$PATH"

if [ "$#" -eq 0 ]; then
    echo "usage: $0 TARGET..." >&2
    exit 2
fi
budget="${FUZZ_CPU_SECONDS:-3660}"
work="${FUZZ_WORK:-$PWD/target/fuzz-work}"
bin_dir="target/x86_64-unknown-linux-gnu/release"
tick=$(getconf CLK_TCK)

mkdir -p "$work"
for t in "$@"; do
    cargo fuzz build --sanitizer none "$t" >>"$work/build.log" 2>&1 ||
        { tail -n 40 "$work/build.log" >&2; echo "fuzz-cpu: build of $t FAILED" >&2; exit 1; }
done

declare -A pid
for t in "$@"; do
    mkdir -p "$work/$t" "artifacts/$t"
    # A wall-time bound far beyond the budget only as a backstop.
    "$bin_dir/$t" -artifact_prefix="artifacts/$t/" -max_total_time=$((budget * 8)) \
        -timeout=60 -print_final_stats=1 "$work/$t" "corpus/$t" >"$work/$t.log" 2>&1 &
    pid[$t]=$!
done
# Stop whatever is still running if this script is stopped.
trap 'for p in "${pid[@]}"; do kill -INT "$p" 2>/dev/null || true; done' EXIT

# CPU seconds (user + system) of a live process, from /proc/PID/stat
# fields 14 and 15 (clock ticks); empty once it has exited.
cpu_of() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    # Field 2 (comm) may hold spaces; cut after its closing parenthesis.
    set -- ${stat##*) }
    echo $(((${12} + ${13}) / tick))
}

declare -A used
running=$#
while [ "$running" -gt 0 ]; do
    sleep 10
    running=0
    for t in "$@"; do
        p=${pid[$t]}
        [ -n "${used[$t]:-}" ] && continue
        c=$(cpu_of "$p")
        if [ -z "$c" ]; then
            used[$t]="exited"
        elif [ "$c" -ge "$budget" ]; then
            used[$t]=$c
            kill -INT "$p"
        else
            running=$((running + 1))
        fi
    done
done

failed=()
for t in "$@"; do
    status=0
    wait "${pid[$t]}" || status=$?
    summary=$(grep -E '^#[0-9]+' "$work/$t.log" | tail -n 1 || true)
    # 72 is libFuzzer's exit code after SIGINT: the budget ran out.
    if [ "$status" -eq 72 ] || [ "$status" -eq 0 ]; then
        echo "fuzz-cpu: $t ok after ${used[$t]} CPU s: ${summary:-no status line}"
    else
        echo "fuzz-cpu: $t FAILED (exit $status) after ${used[$t]} CPU s; see $work/$t.log" >&2
        grep -o 'Test unit written to [^ ]*' "$work/$t.log" >&2 || true
        failed+=("$t")
    fi
done
trap - EXIT
[ "${#failed[@]}" -eq 0 ]
