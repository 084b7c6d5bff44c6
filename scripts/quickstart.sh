#!/usr/bin/env bash
# The first command of the quick start: install what is needed, then start a
# local cluster (metadata server and chunk servers on 127.0.0.1) with all its
# data and logs under $CHUNKFS_LOCAL_DIR (default ./local-cluster).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
dir=${CHUNKFS_LOCAL_DIR:-$PWD/local-cluster}
exec .venv/bin/chunkfs local up --dir "$dir" --name "${CHUNKFS_LOCAL_NAME:-local}" "$@"
