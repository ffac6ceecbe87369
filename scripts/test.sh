#!/usr/bin/env bash
# Set up, then run the linter and the whole test suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
TUNELLM_EXTRAS=dev,serve,ui,deepspeed bash scripts/setup.sh
# the browser test of `tunellm ui` drives Debian's headless Chromium (Playwright never downloads a browser here)
command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
.venv/bin/ruff check .
# two workers (TUNELLM_TEST_WORKERS) of one torch thread each, a whole file per worker, the files in their
# collected order: the long end-to-end files start first and the many short unit files fill in beside them
.venv/bin/pytest -q -n "${TUNELLM_TEST_WORKERS:-2}" --dist loadfile --no-loadscope-reorder --durations=15 "$@"
