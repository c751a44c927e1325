#!/usr/bin/env bash
# Crash-safety check: "a run that survives faults, crashes and rate limits without paying twice".
#
# Usage: scripts/crash-test.sh [--kills N] [--bin-dir DIR] [--epochs E] [--concurrency C]
#                              [--latency-ms L] [--seed S] [--keep]
#   --kills N       times the run is killed with SIGKILL before it is finished (default 5;
#                   `make crash-test` uses 20)
#   --bin-dir DIR   where `dilemma` and `dilemma-mock` are (default target/release)
#   --epochs E      epochs per scenario (default: computed from the kill schedule, see below)
#   --concurrency C trials in flight (default 8)
#   --latency-ms L  the mock's delay before every answer (default 30)
#   --seed S        seed of the kill schedule (default 42)
#   --keep          keep the temporary folder (stores, /stats snapshots, logs) on success too
#
# What it does
#   1. Starts one `dilemma-mock` (no faults, latency L, `--policy hash`) on a free loopback port.
#   2. Reference: runs the suite uninterrupted (`--run ref`, store ref.sqlite), then saves the
#      mock's /stats and zeroes them (POST /stats/reset).
#   3. Crash loop: the same command with `--run crash` and a fresh store crash.sqlite is started
#      in the background, killed with `kill -9` after a seeded pseudo-random 0.3–2.0 s, N times;
#      after each kill (and a pause longer than the mock's latency, so that the mock has settled)
#      the mock's /stats and the number of rows in the store's response cache are recorded.
#      Then the same command runs to completion and must exit 0.
#   4. Assertions (each fails with a message and exit 1; the temporary folder is then copied
#      to /tmp/crash-evidence/ for inspection):
#      a. the crash run has exactly scenarios × epochs trials, all finished, and the run is
#         marked finished;
#      b. no trial is stored twice, no turn is stored twice: every trial's turn indices are
#         exactly 1..n with n = outcome.turns, its model calls have unique (turn, seq) and no
#         call points at a turn that does not exist;
#      c. results equal the uninterrupted run's: per trial key, the outcome status, class, tool
#         sequence, number of turns and number of model calls are identical;
#      d. no finished model call was paid twice (see "Why the body counts prove ..." below).
#   5. Prints a summary: kills, trials, turns, calls, cached calls, requests to the mock in the
#      crash run and in the reference run, and the per-kill accounting.
#
# Why one mock for both runs (and not two instances)
#   Trial keys are `scenario|model spec|eN`, and the model spec carries the base URL with the
#   port. Sampling seeds derive from the trial key, and the seed is part of the request body.
#   With one mock instance both runs have the same keys, so the same seeds and byte-identical
#   request bodies: the crash run must send exactly the set of bodies the reference sent, which
#   the check compares hash by hash. The counts do not mix because the reference run has
#   exited (nothing in flight) when its /stats are saved and reset.
#
# Why the body counts prove "no finished call was paid twice"
#   Every request body is unique in a run (its seed derives from trial, role, turn and
#   attempt), and the mock has no faults, so an uninterrupted run sends each body exactly once
#   (the reference shows it: every body answered once). The response cache is keyed by the
#   whole request and an answer is committed to it before the call returns to the trial. So a
#   call that finished before a kill is in the cache, and when its cut-off trial restarts from
#   the beginning it replays that answer from the cache (`model_calls.cached = 1`) instead of
#   sending it. Only calls that were in flight at the kill are sent again. An in-flight call is
#   one of two kinds:
#     - cut off before the mock answered (counted in `requests`, not in `answered`): resending
#       it costs nothing twice;
#     - answered by the mock, but the process died before the answer reached the client and was
#       committed to the cache ("answered but never received"). The mock counts the answer when
#       it builds it, so this window is the mock's send, the client's read and parse, and one
#       SQLite insert (which may wait on the store writer's lock): small, but real, and it
#       does happen (measured below). Such a
#       call is legitimately answered twice; no harness can avoid it, the answer was lost with
#       the process.
#   So the assertion is not "every body answered at most once" but an accounting, segment by
#   segment (a segment is one process lifetime; after each kill the mock's per-body counts and
#   the number of rows in the store's response cache are recorded):
#     - lost_k = (bodies answered so far) − (rows in the response cache) after kill k: answers
#       paid and never received. The cache maps one-to-one to bodies (one row per distinct
#       request), so this is exact as a count;
#     - within one segment no body is answered twice (no faults, hence no retries);
#     - again_k = bodies answered in segment k that had been answered before: at most
#       lost_{k-1}, since only a lost answer may be paid again; a cached one is replayed;
#     - new_k = lost_k − lost_{k-1} + again_k = answers of segment k that never reached the
#       cache, i.e. answered while in flight at kill k: between 0 and the concurrency;
#     - after the final run lost = 0 (every body's answer is cached), the crash run answered
#       exactly the reference's set of bodies, and in total
#       bodies answered twice <= Σ new_k ("answered but never received") <= kills × concurrency.
#   Both numbers are printed. Limit, honestly: the checks are counts, not identities (the
#   cache key is not the mock's body hash, so a lost body cannot be named), so one re-paid
#   cached call could only go unseen if, in the same segment, a lost answer was not re-sent and
#   the in-flight count stayed within the concurrency. A systematic re-pay (resume ignoring the
#   cache, a cache write that comes too late or not at all) breaks the per-segment counts at
#   once: run it with `dilemma ... --no-cache` and every check above fails.
#   Measured with the defaults (30 ms latency, concurrency 8, a loaded 2-core machine): 16 of
#   40 kills (two 20-kill runs) landed while answers were in that window, losing 1 to 5 of the
#   8 in-flight answers at once (19 and 21 bodies of 8160 answered twice; 5-kill runs: 1 to 4).
#   That they come in bursts suggests the window is sometimes long for all calls at once (the
#   cache insert waiting on the store writer's lock, or a starved CPU). Every lost answer was
#   re-sent in the very next segment (again_k = lost_{k-1}), and nothing else was.
#
# Why the run is long enough for every kill
#   Each call takes at least L ms at the mock and at most C calls are in flight, so a run cannot
#   make more than C / L new calls per second, however fast the machine. A 1-epoch calibration
#   run counts the calls per epoch; epochs are then chosen so that the whole run needs at least
#   1.25 × (sum of the kill delays) seconds of mock latency alone. Every kill therefore hits a
#   running process; a run that exits before a kill is reported as a failure.

set -euo pipefail

# ---------------------------------------------------------------------------------------------
# Arguments
# ---------------------------------------------------------------------------------------------
KILLS=5
BIN_DIR=target/release
EPOCHS=
CONCURRENCY=8
LATENCY_MS=30
SEED=42
KEEP=0

usage() { sed -n '4,13p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --kills) KILLS="$2"; shift 2 ;;
        --bin-dir) BIN_DIR="$2"; shift 2 ;;
        --epochs) EPOCHS="$2"; shift 2 ;;
        --concurrency) CONCURRENCY="$2"; shift 2 ;;
        --latency-ms) LATENCY_MS="$2"; shift 2 ;;
        --seed) SEED="$2"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "crash-test: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
    esac
done
for number in "$KILLS" "$CONCURRENCY" "$LATENCY_MS" "$SEED" ${EPOCHS:+"$EPOCHS"}; do
    [[ "$number" =~ ^[0-9]+$ ]] || { echo "crash-test: '$number' is not a whole number" >&2; exit 2; }
done
(( LATENCY_MS > 0 && CONCURRENCY > 0 )) || { echo "crash-test: latency and concurrency must be > 0" >&2; exit 2; }

# The script works from the repository root (suites/ and the default bin dir are relative to
# it); a --bin-dir given relative to the caller's folder is resolved first.
if [[ "$BIN_DIR" != target/release && -d "$BIN_DIR" ]]; then
    BIN_DIR=$(cd "$BIN_DIR" && pwd)
fi
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DILEMMA="$BIN_DIR/dilemma"
MOCK="$BIN_DIR/dilemma-mock"
for binary in "$DILEMMA" "$MOCK"; do
    [[ -x "$binary" ]] || { echo "crash-test: $binary not found; build it: make build" >&2; exit 1; }
done
SUITE=suites/toxic-proactivity
SCENARIOS=$(find "$SUITE" -maxdepth 1 -name '*.yaml' | wc -l)
(( SCENARIOS > 0 )) || { echo "crash-test: no scenarios in $SUITE" >&2; exit 1; }

# The runs talk to the mock only: no key, no base URL from the caller's environment.
unset OPENAI_API_KEY OPENAI_BASE_URL

# ---------------------------------------------------------------------------------------------
# Temporary folder, cleanup, evidence
# ---------------------------------------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dilemma-crash-test.XXXXXX")
MOCK_PID=
RUN_PID=
FAILED=0

cleanup() {
    local status=$?
    # Only the processes this script started, by their ids.
    [[ -n "$RUN_PID" ]] && kill -9 "$RUN_PID" 2>/dev/null || true
    [[ -n "$RUN_PID" ]] && wait "$RUN_PID" 2>/dev/null || true
    [[ -n "$MOCK_PID" ]] && kill "$MOCK_PID" 2>/dev/null || true
    [[ -n "$MOCK_PID" ]] && wait "$MOCK_PID" 2>/dev/null || true
    if (( FAILED || status != 0 )); then
        local evidence
        evidence="${CRASH_EVIDENCE_DIR:-/tmp/crash-evidence}/$(date +%Y%m%d-%H%M%S)-$$"
        mkdir -p "$evidence" && cp -a "$TMP"/. "$evidence"/ \
            && echo "crash-test: stores, /stats snapshots and logs kept in $evidence" >&2
        rm -rf "$TMP"
    elif (( KEEP )); then
        echo "crash-test: kept $TMP"
    else
        rm -rf "$TMP"
    fi
}
trap cleanup EXIT
trap "exit 130" INT TERM   # run the EXIT trap (stop the processes, keep the evidence) on Ctrl-C

fail() {
    FAILED=1
    echo "crash-test: FAIL: $*" >&2
    exit 1
}

# An HTTP call to the mock (GET, or POST with a second argument), body on stdout.
mock_http() {
    if [[ $# -gt 1 ]]; then curl -fsS -X POST "$MOCK_URL$1"; else curl -fsS "$MOCK_URL$1"; fi
}

# Answers in a store's response cache (its own table, and those that moved into a finished
# trial's archive: archived_responses), read-only so that reading does not checkpoint the WAL
# the killed process left behind (the restarted run must find the store as the kill left it).
cache_rows() {
    python3 - "$1" <<'PY'
import sqlite3, sys
COUNT = "SELECT (SELECT count(*) FROM response_cache) + (SELECT count(*) FROM archived_responses)"
try:
    connection = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
    rows = connection.execute(COUNT).fetchone()[0]
except sqlite3.OperationalError:
    # A WAL store without its -shm file cannot be opened read-only; nothing is pending then.
    rows = sqlite3.connect(sys.argv[1]).execute(COUNT).fetchone()[0]
print(rows)
PY
}

# ---------------------------------------------------------------------------------------------
# The mock
# ---------------------------------------------------------------------------------------------
"$MOCK" --port 0 --latency-ms "$LATENCY_MS" --fault-rate 0 --seed 0 --policy hash \
    >"$TMP/mock.out" 2>"$TMP/mock.err" &
MOCK_PID=$!
for _ in $(seq 100); do
    [[ -s "$TMP/mock.out" ]] && break
    kill -0 "$MOCK_PID" 2>/dev/null || fail "dilemma-mock exited: $(cat "$TMP/mock.err")"
    sleep 0.05
done
MOCK_URL=$(head -n 1 "$TMP/mock.out" | sed -n 's|^listening on \(http://127\.0\.0\.1:[0-9]*\).*|\1|p')
[[ -n "$MOCK_URL" ]] || fail "dilemma-mock did not say where it listens: $(cat "$TMP/mock.out" "$TMP/mock.err")"
BASE_URL="$MOCK_URL/v1"

# The same command for every run but the run id, the store and the epochs; sets ARGS.
set_args() { # set_args RUN_ID STORE EPOCHS
    ARGS=(run "$SUITE" --run "$1" --store "$2" --epochs "$3" --concurrency "$CONCURRENCY"
          --model "agent=openai:mock@$BASE_URL" --out "$TMP/out-$1")
}

# ---------------------------------------------------------------------------------------------
# The kill schedule: seeded, so a failure can be replayed with the same delays.
# ---------------------------------------------------------------------------------------------
RANDOM=$SEED
DELAYS_MS=()
DELAY_SUM_MS=0
for (( k = 0; k < KILLS; k++ )); do
    delay=$(( 300 + RANDOM % 1701 ))   # 300..2000 ms
    DELAYS_MS+=("$delay")
    DELAY_SUM_MS=$(( DELAY_SUM_MS + delay ))
done

# ---------------------------------------------------------------------------------------------
# Epochs: long enough that every kill hits a running process (see the header).
# ---------------------------------------------------------------------------------------------
if [[ -z "$EPOCHS" ]]; then
    set_args calibrate "$TMP/calibrate.sqlite" 1
    "$DILEMMA" "${ARGS[@]}" >"$TMP/calibrate.log" 2>&1 \
        || fail "the 1-epoch calibration run failed: $(tail -n 5 "$TMP/calibrate.log")"
    # Finished trials keep their calls in trial_archives (one compressed record per trial).
    CALLS_PER_EPOCH=$(python3 -c 'import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute("SELECT (SELECT count(*) FROM model_calls) + (SELECT coalesce(sum(calls), 0) FROM trial_archives)").fetchone()[0])' "$TMP/calibrate.sqlite")
    (( CALLS_PER_EPOCH > 0 )) || fail "the calibration run made no model calls"
    # epochs >= 1.25 × Σdelays × C / (L × calls per epoch), and at least 4.
    EPOCHS=$(( (125 * DELAY_SUM_MS * CONCURRENCY + 100 * LATENCY_MS * CALLS_PER_EPOCH - 1) / (100 * LATENCY_MS * CALLS_PER_EPOCH) ))
    (( EPOCHS >= 4 )) || EPOCHS=4
fi
PLANNED=$(( SCENARIOS * EPOCHS ))
echo "crash-test: mock $MOCK_URL (latency ${LATENCY_MS} ms, no faults); $SCENARIOS scenarios × $EPOCHS epochs = $PLANNED trials, concurrency $CONCURRENCY; $KILLS kills after ${DELAYS_MS[*]} ms (seed $SEED)"

# ---------------------------------------------------------------------------------------------
# Reference run, uninterrupted
# ---------------------------------------------------------------------------------------------
mock_http /stats/reset post >/dev/null   # drop the calibration run's counts
started=$SECONDS
set_args ref "$TMP/ref.sqlite" "$EPOCHS"
"$DILEMMA" "${ARGS[@]}" >"$TMP/ref.log" 2>&1 \
    || fail "the reference run failed: $(tail -n 5 "$TMP/ref.log")"
REF_SECONDS=$(( SECONDS - started ))
mock_http /stats >"$TMP/stats-ref.json"
mock_http /stats/reset post >/dev/null
echo "crash-test: reference run finished in ${REF_SECONDS} s"

# ---------------------------------------------------------------------------------------------
# Crash loop: start, sleep, kill -9, record what the mock answered and what the store cached.
# ---------------------------------------------------------------------------------------------
CRASH_STORE="$TMP/crash.sqlite"
set_args crash "$CRASH_STORE" "$EPOCHS"
CRASH_ARGS=("${ARGS[@]}")
mock_http /stats >"$TMP/stats-kill-0.json"   # all zero: the baseline of segment 1
echo 0 >"$TMP/cache-kill-0.txt"
# After a kill, the mock may still be sleeping on a request of the dead process; it answers (and
# counts) it at most L ms later. Wait well past that before reading /stats.
SETTLE_MS=$(( 2 * LATENCY_MS + 200 ))
seconds() { printf '%d.%03d' $(( $1 / 1000 )) $(( $1 % 1000 )); }   # 1062 -> 1.062
started=$SECONDS
for (( k = 1; k <= KILLS; k++ )); do
    "$DILEMMA" "${CRASH_ARGS[@]}" >"$TMP/crash-$k.log" 2>&1 &
    RUN_PID=$!
    sleep "$(seconds "${DELAYS_MS[k-1]}")"
    if kill -0 "$RUN_PID" 2>/dev/null; then
        kill -9 "$RUN_PID" 2>/dev/null || true
        status=0; wait "$RUN_PID" 2>/dev/null || status=$?
        RUN_PID=
        # 137 = killed by SIGKILL. Anything else means it ended on its own just before the kill.
        (( status == 137 )) || fail "kill $k: the run ended on its own (exit $status) before the kill; see $TMP/crash-$k.log"
    else
        status=0; wait "$RUN_PID" 2>/dev/null || status=$?
        RUN_PID=
        fail "kill $k: the run was no longer running after ${DELAYS_MS[k-1]} ms (exit $status): it cannot have made all its calls in that time; see $TMP/crash-$k.log"
    fi
    sleep "$(seconds "$SETTLE_MS")"
    mock_http /stats >"$TMP/stats-kill-$k.json"
    cache_rows "$CRASH_STORE" >"$TMP/cache-kill-$k.txt" 2>"$TMP/cache-kill-$k.err" \
        || fail "kill $k: the store cannot be read after the kill: $(cat "$TMP/cache-kill-$k.err")"
done
LOOP_SECONDS=$(( SECONDS - started ))

# The same command once more, to completion.
started=$SECONDS
"$DILEMMA" "${CRASH_ARGS[@]}" >"$TMP/crash-final.log" 2>&1 \
    || fail "the resumed run did not finish (exit $?): $(tail -n 5 "$TMP/crash-final.log")"
FINAL_SECONDS=$(( SECONDS - started ))
mock_http /stats >"$TMP/stats-final.json"
cache_rows "$CRASH_STORE" >"$TMP/cache-final.txt"
echo "crash-test: $KILLS kills in ${LOOP_SECONDS} s, then the resumed run finished in ${FINAL_SECONDS} s"

# ---------------------------------------------------------------------------------------------
# Assertions and summary
# ---------------------------------------------------------------------------------------------
python3 - "$TMP" "$KILLS" "$PLANNED" "$CONCURRENCY" <<'PY' || { FAILED=1; exit 1; }
import json, re, sqlite3, sys, zlib
from pathlib import Path

tmp, kills, planned, concurrency = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
failures = []

def check(condition, message):
    if not condition:
        failures.append(message)
    return condition

def connect(name):
    # Every process that wrote the stores has ended: an ordinary connection, used read-only.
    return sqlite3.connect(tmp / name)

def normal(key):
    # Both runs use the same mock, so keys are identical; strip the port anyway so that the
    # comparison does not depend on it.
    return re.sub(r"@http://127\.0\.0\.1:\d+/v1", "", key)

def results(db, run):
    """Per trial: status, outcome, turn indices, model-call (turn, seq) pairs."""
    trials = {}
    rows = db.execute(
        "SELECT key, status, outcome_status, class, json_extract(outcome, '$.turns'), "
        "json_extract(outcome, '$.tools') FROM trials WHERE run_id = ?", (run,)).fetchall()
    for key, status, outcome_status, klass, turns, tools in rows:
        tools = [tool["tool"] for tool in json.loads(tools)] if tools else None
        trials[normal(key)] = dict(key=key, status=status, outcome_status=outcome_status, klass=klass,
                                   turns=turns, tools=tools, turn_indices=[], calls=[])
    def entry(key):
        return trials.setdefault(normal(key), dict(key=key, status="missing", turns=None, turn_indices=[], calls=[]))
    # Journal rows (trials that were running) and archives (finished trials: their journal
    # rows compacted into one zlib-compressed JSON record, see crates/dilemma/src/store/archive.rs).
    for key, index in db.execute("SELECT trial_key, turn_index FROM turns WHERE run_id = ? ORDER BY trial_key, turn_index", (run,)):
        entry(key)["turn_indices"].append(index)
    for key, index, seq in db.execute("SELECT trial_key, turn_index, seq FROM model_calls WHERE run_id = ?", (run,)):
        entry(key)["calls"].append((index, seq))
    for key, body in db.execute("SELECT trial_key, body FROM trial_archives WHERE run_id = ?", (run,)):
        archive = json.loads(zlib.decompress(body))
        entry(key)["turn_indices"].extend(turn["index"] for turn in archive["turns"])
        entry(key)["calls"].extend((call["turn"], call["seq"]) for call in archive["calls"])
        entry(key)["cached"] = sum(1 for call in archive["calls"] if call.get("cached"))
    return trials, len(rows)

ref_db, crash_db = connect("ref.sqlite"), connect("crash.sqlite")
ref, ref_rows = results(ref_db, "ref")
crash, crash_rows = results(crash_db, "crash")

# 1. Exactly the planned trials, all finished, the run finished.
check(ref_rows == planned, f"the reference run has {ref_rows} trials, {planned} planned")
check(crash_rows == planned, f"the crash run has {crash_rows} trials, {planned} planned")
unfinished = [t["key"] for t in crash.values() if t["status"] != "finished"]
check(not unfinished, f"{len(unfinished)} crash-run trials not finished, e.g. {unfinished[:3]}")
run_status = crash_db.execute("SELECT status FROM runs WHERE id = 'crash'").fetchone()
check(run_status == ("finished",), f"the crash run's status is {run_status}, not finished")

# 2. No trial twice, no turn twice, no stray model call.
distinct = crash_db.execute("SELECT count(DISTINCT key) FROM trials WHERE run_id = 'crash'").fetchone()[0]
check(distinct == crash_rows, f"{crash_rows} trial rows but {distinct} distinct keys: a trial stored twice")
def stored_turns(t):
    # outcome.turns counts turns with an accepted action; a trial that ended in a protocol or
    # infrastructure error also stores the turn that failed.
    return (t["turns"] or 0) + (0 if t["outcome_status"] == "completed" else 1)

for name, trials in (("reference", ref), ("crash", crash)):
    bad_turns = [t["key"] for t in trials.values() if t["turn_indices"] != list(range(1, stored_turns(t) + 1))]
    check(not bad_turns, f"{name} run: {len(bad_turns)} trials whose turn indices are not exactly 1..outcome.turns "
                         f"(duplicate, missing or extra turns), e.g. "
                         + "; ".join(f"{k}: {trials[normal(k)]['turn_indices']} vs turns={trials[normal(k)]['turns']}" for k in bad_turns[:3]))
    bad_calls = [t["key"] for t in trials.values()
                 if len(set(t["calls"])) != len(t["calls"])
                 or any(not 1 <= index <= stored_turns(t) for index, _ in t["calls"])
                 or {index for index, _ in t["calls"]} != set(t["turn_indices"])]
    check(not bad_calls, f"{name} run: {len(bad_calls)} trials with duplicate model calls, calls of a turn that does "
                         f"not exist, or turns without calls, e.g. {bad_calls[:3]}")

# 3. The same results as the uninterrupted run.
check(set(ref) == set(crash), f"trial keys differ: only in reference {sorted(set(ref) - set(crash))[:3]}, "
                              f"only in crash {sorted(set(crash) - set(ref))[:3]}")
differ = [key for key in set(ref) & set(crash)
          if (ref[key]["outcome_status"], ref[key]["klass"], ref[key]["tools"], ref[key]["turns"], len(ref[key]["calls"]))
          != (crash[key]["outcome_status"], crash[key]["klass"], crash[key]["tools"], crash[key]["turns"], len(crash[key]["calls"]))]
check(not differ, f"{len(differ)} trials differ from the uninterrupted run, e.g. "
                  + "; ".join(f"{key}: reference {ref[key]['klass']} {ref[key]['tools']}, crash {crash[key]['klass']} {crash[key]['tools']}"
                              for key in sorted(differ)[:2]))

# 4. Nothing finished paid twice: the accounting of the mock's answers per body hash (see the header).
def stats(name):
    return json.loads((tmp / name).read_text())

ref_stats = stats("stats-ref.json")
# Snapshot k (k = 1..kills) was taken after kill k; the last one after the final run. Segment k
# is the process lifetime between snapshot k-1 and snapshot k.
snapshots = [stats(f"stats-kill-{k}.json") for k in range(kills + 1)] + [stats("stats-final.json")]
cache_rows = [int((tmp / f"cache-kill-{k}.txt").read_text()) for k in range(kills + 1)] + [int((tmp / "cache-final.txt").read_text())]

def answered(snapshot):
    return {body: count["answered"] for body, count in snapshot["bodies"].items() if count["answered"]}

ref_answered = answered(ref_stats)
check(all(count == 1 for count in ref_answered.values()), "the uninterrupted run had a body answered more than once")
# lost[k]: answers paid but not in the cache after kill k (bodies answered so far − cache rows).
# again[k]: bodies answered in segment k that had been answered before (paid a second time).
# new[k]: answers of segment k that never reached the cache = answered in flight at kill k.
lost, again, new = [0], [0], [0]
for k in range(1, len(snapshots)):
    before, after = answered(snapshots[k - 1]), answered(snapshots[k])
    segment = "the final run" if k == len(snapshots) - 1 else f"segment {k} (ended by kill {k})"
    twice_in_segment = [body for body, count in after.items() if count - before.get(body, 0) > 1]
    check(not twice_in_segment, f"{segment}: {len(twice_in_segment)} bodies answered twice within one process, e.g. {twice_in_segment[:3]}")
    again.append(sum(1 for body, count in after.items() if before.get(body, 0) >= 1 and count > before[body]))
    lost.append(len(after) - cache_rows[k])
    new.append(lost[k] - lost[k - 1] + again[k])
    # Only an answer that was lost (paid, never cached) may be paid again: a cached one is replayed.
    check(again[k] <= lost[k - 1], f"{segment}: {again[k]} bodies answered again, but only {lost[k - 1]} answers "
                                   f"were lost (answered, not cached) before it: a finished call was paid twice")
    check(0 <= new[k] <= concurrency, f"{segment}: {new[k]} answers never reached the cache; at most {concurrency} "
                                      f"calls can be in flight ({len(after)} bodies answered, {cache_rows[k]} cached)")
check(lost[-1] == 0, f"after the final run {lost[-1]} answered bodies are still not in the response cache")

final = snapshots[-1]
final_answered = answered(final)
twice = sum(1 for count in final_answered.values() if count > 1)
extra = sum(count - 1 for count in final_answered.values())
never_received = sum(new)
check(set(final_answered) == set(ref_answered),
      f"the crash run's bodies differ from the reference's: {len(set(final_answered) - set(ref_answered))} extra, "
      f"{len(set(ref_answered) - set(final_answered))} missing")
check(extra == sum(again), f"{extra} extra answers in total but {sum(again)} counted per segment")
check(extra <= never_received <= kills * concurrency,
      f"{extra} extra answers, {never_received} answers never received, bound kills × concurrency = {kills * concurrency}")
requested_unanswered = final["requests"] - final["answered"]

turns = sum(len(trial["turn_indices"]) for trial in crash.values())
calls = sum(len(trial["calls"]) for trial in crash.values())
cached = crash_db.execute("SELECT coalesce(sum(cached), 0) FROM model_calls WHERE run_id = 'crash'").fetchone()[0] \
    + sum(trial.get("cached", 0) for trial in crash.values())
print(f"crash-test summary: {kills} kills; {crash_rows} trials ({planned} planned), {turns} turns, {calls} model calls "
      f"of which {cached} replayed from the cache")
print(f"  requests to the mock: crash run {final['requests']} ({final['answered']} answered, "
      f"{requested_unanswered} cut off before an answer), reference run {ref_stats['requests']} ({ref_stats['answered']} answered)")
print(f"  bodies: {len(final_answered)} distinct (reference {len(ref_answered)}); answered twice: {twice} bodies "
      f"({extra} extra answers) <= answered but never received at the kills: {never_received} "
      f"<= kills × concurrency: {kills * concurrency}")
print(f"  answered but never received, per kill: {new[1:kills + 1]}; answered again, per segment after a kill: {again[2:]}")
if failures:
    for failure in failures:
        print(f"crash-test: FAIL: {failure}", file=sys.stderr)
    sys.exit(1)
print("crash-test: PASS")
PY
