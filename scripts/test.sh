#!/usr/bin/env bash
# Set up, then run the linter and the whole test suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
TUNELLM_EXTRAS=dev,serve,ui,deepspeed bash scripts/setup.sh
# the browser test of `tunellm ui` drives Debian's headless Chromium (Playwright never downloads a browser here)
command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
.venv/bin/ruff check .
.venv/bin/pytest -q --durations=15 "$@"
