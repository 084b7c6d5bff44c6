#!/usr/bin/env bash
# The second command of the quick start, and what CI runs: install what is
# needed, then run the whole test suite. Fails when a test fails and when no
# test ran at all (pytest's exit code 5). Tests run in CHUNKFS_TEST_WORKERS
# processes (2 by default; `-n 0` after the command runs them in this one).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
.venv/bin/ruff check src tests bench
status=0
.venv/bin/python -m pytest -p no:cacheprovider -n "${CHUNKFS_TEST_WORKERS:-2}" "$@" || status=$?
if [ "$status" -eq 5 ]; then
  echo "test.sh: no test ran: that is a failure" >&2
  exit 1
fi
exit "$status"
