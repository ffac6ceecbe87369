#!/usr/bin/env bash
# Set up, then run the linter and the whole test suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
TUNELLM_EXTRAS=dev,serve,ui,deepspeed bash scripts/setup.sh
# the browser test of `tunellm ui` drives Debian's headless Chromium (Playwright never downloads a browser here)
command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
.venv/bin/ruff check .
# two workers, one per core: most tests run one torch thread (conftest), so one process leaves a core idle;
# --dist loadfile keeps a file's module fixtures (tiny models, tokenizers) built once
.venv/bin/pytest -q -n 2 --dist loadfile --durations=15 "$@"
