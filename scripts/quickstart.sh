#!/usr/bin/env bash
# The first command of the quick start: install what is needed, then start a
# local cluster (3 metadata servers and 3 chunk servers on 127.0.0.1) with all
# its data and logs under $CHUNKFS_LOCAL_DIR (default ./local-cluster), and
# mount it on $CHUNKFS_MOUNT (default ./local-cluster/mnt).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install.sh
dir=${CHUNKFS_LOCAL_DIR:-$PWD/local-cluster}
mnt=${CHUNKFS_MOUNT:-$dir/mnt}
mkdir -p "$mnt"
.venv/bin/chunkfs local up --dir "$dir" --name "${CHUNKFS_LOCAL_NAME:-local}" --mount "$mnt" "$@"
echo "The chunkfs command is in $PWD/.venv/bin: run '. .venv/bin/activate' in your shell first."
