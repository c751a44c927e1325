#!/usr/bin/env bash
# Builds llama.cpp's `llama-bench` for W2 against exactly the llama.cpp the `dilemma-local`
# crate runs: the headers of the vendored source in llama-cpp-sys-2 (version from Cargo.lock)
# and the static libraries cargo already built from it (target/release/build/llama-cpp-sys-2-*/out,
# same compiler flags, same ggml CPU features). The crate vendors llama.cpp without its
# tools/, so the two source files of tools/llama-bench come from the llama-cpp-python sdist on
# PyPI (fetched with pip, the ordinary client; it carries the full llama.cpp tree).
#
# Output: .cache/bench/llama-bench/llama-bench (rebuilt only when the libraries are newer).
# Needs: `make build` done (the libraries), a C++ compiler ($CXX, default c++), pip.
# About 20 s of compiling.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DEST=.cache/bench/llama-bench
SDIST_VERSION=0.3.36
mkdir -p "$DEST"

sys_version=$(awk '/^name = "llama-cpp-sys-2"/ {getline; gsub(/"/, "", $3); print $3}' Cargo.lock)
source_dir=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"llama-cpp-sys-2-$sys_version"/llama.cpp 2>/dev/null | head -1)
[[ -d "$source_dir" ]] || { echo "build-llama-bench: llama-cpp-sys-2 $sys_version source not found; run make build" >&2; exit 1; }
# The newest cargo build of the crate's llama.cpp.
out_dir=$(ls -td target/release/build/llama-cpp-sys-2-*/out 2>/dev/null | while read -r dir; do
    [[ -f "$dir/lib/libllama.a" && -f "$dir/build/common/libllama-common.a" ]] && { echo "$dir"; break; }; done)
[[ -n "$out_dir" ]] || { echo "build-llama-bench: no built llama.cpp under target/release/build; run make build" >&2; exit 1; }

if [[ -x "$DEST/llama-bench" && "$DEST/llama-bench" -nt "$out_dir/lib/libllama.a" ]]; then
    exit 0
fi

tools="$DEST/llama_cpp_python-$SDIST_VERSION/vendor/llama.cpp/tools/llama-bench"
if [[ ! -f "$tools/llama-bench.cpp" ]]; then
    python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$SDIST_VERSION" -d "$DEST/sdist"
    tar xzf "$DEST/sdist/llama_cpp_python-$SDIST_VERSION.tar.gz" -C "$DEST" \
        --wildcards "*/vendor/llama.cpp/tools/llama-bench/*"
fi

echo "build-llama-bench: compiling tools/llama-bench against llama-cpp-sys-2 $sys_version ($out_dir)" >&2
build="$out_dir/build"
# OpenSSL only when the crate's build linked it (cpp-httplib in llama-common).
ssl=()
ssl_library=$(sed -n 's/^OPENSSL_SSL_LIBRARY:FILEPATH=//p' "$build/CMakeCache.txt")
crypto_library=$(sed -n 's/^OPENSSL_CRYPTO_LIBRARY:FILEPATH=//p' "$build/CMakeCache.txt")
if [[ -n "$ssl_library" && "$ssl_library" != *NOTFOUND* ]]; then ssl=("$ssl_library" "$crypto_library"); fi
nice "${CXX:-c++}" -std=c++17 -O2 -DNDEBUG -march=x86-64 \
    -I"$source_dir/include" -I"$source_dir/ggml/include" -I"$source_dir/common" -I"$source_dir/vendor" \
    "$tools/llama-bench.cpp" "$tools/main.cpp" -o "$DEST/llama-bench.tmp" \
    "$build/common/libllama-common.a" "$build/common/libllama-common-base.a" \
    "$build/vendor/cpp-httplib/libcpp-httplib.a" "$build/vendor/hash/libvendor-hash.a" \
    "$out_dir/lib/libllama.a" "$out_dir/lib/libggml.a" "$out_dir/lib/libggml-cpu.a" "$out_dir/lib/libggml-base.a" \
    "${ssl[@]}" -fopenmp -lpthread -ldl
mv "$DEST/llama-bench.tmp" "$DEST/llama-bench"
echo "$sys_version $out_dir" > "$DEST/built-from"
