#!/usr/bin/env bash
# Reproducible benchmarks (issue 6): W1 harness overhead vs Inspect, W2 embedded inference vs
# llama-bench, W3 multi-turn prefix reuse, W4 report over 100,000 stored trials.
#
#   bench/run.sh            full benchmark (`make bench`): writes BENCHMARKS.md
#   bench/run.sh --smoke    seconds, small sizes, no thresholds (`make bench-smoke`, CI):
#                           writes .cache/bench/BENCHMARKS-smoke.md
#
# Options:
#   --inspect / --no-inspect   run Inspect's side of W1 (default: on for the full benchmark,
#                              off for the smoke, because creating the venv with
#                              inspect-ai==0.3.285 takes about 100 s of pip install)
#   --only w1,w2,w3,w4         a subset of the workloads
#   --out FILE                 where the markdown goes
#
# Needs the release binaries (`make build`), the embedded model (`make model`), and for W2
# g++ and the llama.cpp libraries cargo built (bench/build-llama-bench.sh). Everything it
# creates lives under .cache/bench (ignored by git). The measuring is bench/bench.py
# (Python standard library only). To compare two builds on W1, alternated in one run:
# bench/ab.py (see its --help).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

smoke=0
inspect=""
pass=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --smoke) smoke=1; shift ;;
        --inspect) inspect=yes; shift ;;
        --no-inspect) inspect=no; shift ;;
        --only|--out) pass+=("$1" "$2"); shift 2 ;;
        *) echo "bench/run.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[[ -n "$inspect" ]] || inspect=$([[ $smoke == 1 ]] && echo no || echo yes)
only=w1,w2,w3,w4
for ((i = 0; i < ${#pass[@]}; i += 2)); do [[ "${pass[i]}" == --only ]] && only="${pass[i+1]}"; done

started=$(date +%s)
for binary in target/release/dilemma target/release/dilemma-mock target/release/examples/local_speed target/release/examples/store_bench target/release/examples/w1_floor; do
    [[ -x "$binary" ]] || { echo "bench/run.sh: $binary is missing; run \`make build\` first" >&2; exit 1; }
done
if [[ "$only" == *w2* || "$only" == *w3* ]]; then
    bash scripts/fetch-model.sh models >/dev/null
fi
if [[ "$only" == *w2* ]]; then
    bash bench/build-llama-bench.sh
fi

venv_args=()
if [[ "$inspect" == yes && "$only" == *w1* ]]; then
    venv=.cache/bench/venv
    if [[ ! -x "$venv/bin/inspect" ]]; then
        echo "bench/run.sh: creating $venv with inspect-ai==0.3.285 (pip; about 100 s)" >&2
        venv_started=$(date +%s)
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/pip" install -q "inspect-ai==0.3.285" openai
        venv_args=(--venv-seconds "$(( $(date +%s) - venv_started ))")
    fi
fi

mode_args=()
invocation="make bench"
if [[ $smoke == 1 ]]; then
    mode_args=(--smoke)
    invocation="make bench-smoke"
fi
status=0
python3 bench/bench.py "${mode_args[@]}" --inspect "$inspect" --invocation "$invocation" "${venv_args[@]}" "${pass[@]}" || status=$?
echo "bench/run.sh: $([[ $smoke == 1 ]] && echo smoke || echo full) benchmark finished in $(( $(date +%s) - started )) s (status $status)" >&2
exit $status
