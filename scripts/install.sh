#!/usr/bin/env bash
# Installs everything ChunkFS needs on a Debian machine: system packages and a
# Python virtual environment (.venv) with the project and its pinned
# dependencies. Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# fuse3 and libfuse3-dev: the mount; fio, sqlite3, qemu-utils: the tools the
# mount tests and benchmarks drive; pkg-config: building pyfuse3; chromium: the
# headless browser the dashboard test loads the web dashboard in.
DEBIAN_PACKAGES=(fuse3 libfuse3-dev pkg-config fio sqlite3 qemu-utils chromium)

if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# fusectl shows each FUSE mount's limits; a mount raises its requests in flight there (the kernel's
# 12 is below a VM's queue depth). systemd mounts it at boot; containers often do not.
if [ -d /sys/fs/fuse/connections ] && ! mountpoint -q /sys/fs/fuse/connections; then
  $SUDO mount -t fusectl fusectl /sys/fs/fuse/connections 2>/dev/null \
    || echo "note: could not mount fusectl on /sys/fs/fuse/connections: mounts keep 12 requests in flight" >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.chunkfs-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "installing Python packages into .venv" >&2
  .venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
  touch "$stamp"
fi

# The manual page (docs/chunkfs.1, made from the command's own help by scripts/make_man.py): `man chunkfs`.
man_dir=/usr/local/share/man/man1
if { [ -d "$man_dir" ] || $SUDO mkdir -p "$man_dir" 2>/dev/null; } && ! cmp -s docs/chunkfs.1 "$man_dir/chunkfs.1"; then
  $SUDO install -m 0644 docs/chunkfs.1 "$man_dir/chunkfs.1" 2>/dev/null \
    || echo "note: could not install the manual page into $man_dir: read it with man -l docs/chunkfs.1" >&2
fi
