#!/usr/bin/env bash
# The main job: set up, check the bundled identity data, LoRA-tune the embedded default model on it
# on the CPU, then score base vs tuned on the held-back rows. Starts afresh in runs/quickstart.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
tunellm() { .venv/bin/tunellm "$@"; }
CONFIG=examples/quickstart.yaml
OUT=runs/quickstart
rm -rf "$OUT"

echo "== 1. the data: lengths, truncation, and what is trained"
tunellm data stats tunellm/samples/identity_train.json --config "$CONFIG" --histogram "$OUT/token_lengths.png"
tunellm data preview tunellm/samples/identity_train.json --config "$CONFIG" -n 1

echo "== 2. LoRA fine-tune of SmolLM2-135M-Instruct on the CPU"
tunellm train "$CONFIG"

echo "== 3. before/after on the held-back rows (base vs tuned)"
tunellm eval tunellm/samples/identity_heldout.json --adapter "$OUT" --compare --output "$OUT/eval"

echo "== done: adapter in $OUT (best checkpoint named in $OUT/best.json), log $OUT/train_log.jsonl,"
echo "   loss curve $OUT/loss_curve.png, scores $OUT/eval/metrics.md; chat with it:"
echo "   .venv/bin/tunellm chat --adapter $OUT"
