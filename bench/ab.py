#!/usr/bin/env python3
"""A/B of dilemma builds on W1: the same workload as `make bench`, builds alternated in one run.

    python3 bench/ab.py [--trials 1000] [--concurrency 500] [--reps 5] \
        base=target/release/dilemma other=/tmp/dilemma-variant[,/tmp/dilemma-mock-variant] \
        [--env other:SOME_SWITCH=1]

Each variant is NAME=DILEMMA_BINARY[,MOCK_BINARY] (the mock defaults to
target/release/dilemma-mock); --env NAME:KEY=VALUE sets an environment variable for that
variant's dilemma and mock only (dilemma's environment drops DILEMMA_*, OPENAI_* and
INSPECT_* variables, as in `make bench`). Rounds alternate the variants (a, b, a, b, ...) so that a
change in the machine's speed falls on all of them alike: on a shared 2-core machine the
same binary's wall time moved 2.0–2.7 s over one afternoon, so only runs of one set compare.
Prints every run, then each variant's medians and their ratio to the first variant's.

Python standard library only; runs are W1 runs of bench/bench.py (`w1_run`), kept under
.cache/bench/w1/dilemma-ab-NAME-REP.
"""

import argparse
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the directory above must be on the path first)

# The W1 metrics an A/B compares, labelled and formatted as BENCHMARKS.md shows them.
COLUMNS = [metric for metric in bench.W1_METRICS if metric[0] in {"wall_s", "busy_s", "cpu_s", "mock_cpu_s", "rss_mb"}]


def parse_variant(text):
    name, separator, binaries = text.partition("=")
    if not separator or not name or not binaries:
        raise argparse.ArgumentTypeError(f"a variant is NAME=DILEMMA[,MOCK], not {text!r}")
    dilemma, _, mock = binaries.partition(",")
    for path in (dilemma, mock or bench.MOCK):
        if not os.access(path, os.X_OK):
            raise argparse.ArgumentTypeError(f"variant {name}: {path} is not an executable file")
    return {"name": name, "dilemma": os.path.abspath(dilemma), "mock": os.path.abspath(mock or bench.MOCK), "env": {}}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--reps", type=int, default=5, help="runs of each variant")
    parser.add_argument("--env", action="append", default=[], metavar="NAME:KEY=VALUE")
    parser.add_argument("variants", nargs="+", type=parse_variant, metavar="NAME=DILEMMA[,MOCK]")
    arguments = parser.parse_args()
    by_name = {variant["name"]: variant for variant in arguments.variants}
    if len(by_name) != len(arguments.variants):
        parser.error("variant names must differ")
    for setting in arguments.env:
        name, _, assignment = setting.partition(":")
        key, separator, value = assignment.partition("=")
        if name not in by_name or not separator or not key:
            parser.error(f"--env takes NAME:KEY=VALUE for a named variant, not {setting!r}")
        by_name[name]["env"][key] = value

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # as many connections as trials in flight
    os.makedirs(bench.CACHE, exist_ok=True)
    # The variants' own settings must not leak into each other: the mock inherits this
    # process's environment and dilemma gets bench.clean_env() of it.
    baseline_env = dict(os.environ)
    runs = {variant["name"]: [] for variant in arguments.variants}
    for rep in range(arguments.reps):
        for variant in arguments.variants:
            os.environ.clear()
            os.environ.update(baseline_env | variant["env"])
            bench.DILEMMA, bench.MOCK = variant["dilemma"], variant["mock"]
            run = bench.w1_run("dilemma", arguments.trials, arguments.concurrency, f"ab-{variant['name']}-{rep}")
            runs[variant["name"]].append(run)
            shown = "; ".join(f"{label} {pattern.format(run[key])}" for key, label, pattern in COLUMNS if run.get(key) is not None)
            print(f"{rep + 1}/{arguments.reps} {variant['name']}: {shown}" + ("" if run["valid"] else "  INVALID (see its folder)"), flush=True)
    os.environ.clear()
    os.environ.update(baseline_env)

    print(f"\nmedians of valid runs, {arguments.trials:,} trials / {arguments.concurrency:,} concurrent:")
    first = None
    for variant in arguments.variants:
        valid = [run for run in runs[variant["name"]] if run["valid"]]
        medians = {key: bench.median([run.get(key) for run in valid]) for key, _, _ in COLUMNS}
        first = first or medians
        cells = []
        for key, label, pattern in COLUMNS:
            if medians[key] is None:
                cells.append(f"{label} –")
                continue
            ratio = f" ({medians[key] / first[key]:.3f}×)" if first[key] and variant is not arguments.variants[0] else ""
            cells.append(f"{label} {pattern.format(medians[key])}{ratio}")
        print(f"  {variant['name']} ({len(valid)} of {arguments.reps} valid): " + "; ".join(cells))
    return 0 if all(run["valid"] for variant_runs in runs.values() for run in variant_runs) else 1


if __name__ == "__main__":
    sys.exit(main())
