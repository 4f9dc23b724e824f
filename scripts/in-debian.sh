#!/usr/bin/env bash
# Run a command in the Debian 12 environment hitless's CI is written for
# (the official rust:1-bookworm image), as root so scripts/setup.sh can
# apt-get, with /dev/kvm and /dev/vhost-vsock passed through when the host has
# them. The checkout is mounted at /src; cargo's registry is kept in
# .ci-cache/ so a CI cache can restore it.
#   scripts/in-debian.sh bash .ci/run
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
command -v docker >/dev/null || { echo "in-debian: docker is not installed" >&2; exit 2; }
devices=()
for d in /dev/kvm /dev/vhost-vsock; do
  if [ -e "$d" ]; then devices+=(--device "$d"); else echo "in-debian: no $d on this host"; fi
done
mkdir -p "$here/.ci-cache/cargo-registry"
# Chromium (the report tests) needs more shared memory than docker's 64 MiB.
exec docker run --rm --init --shm-size=1g "${devices[@]}" \
  -e CI=true -e CARGO_TERM_COLOR=never \
  -v "$here:/src" -w /src \
  -v "$here/.ci-cache/cargo-registry:/usr/local/cargo/registry" \
  "${HITLESS_CI_IMAGE:-rust:1-bookworm}" "$@"
