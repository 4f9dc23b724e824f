#!/usr/bin/env bash
# Installs what hitless needs on a Debian 12 host, only what is missing:
#   - qemu-system-x86 together with a matching qemu-utils (installing the first
#     alone removes the newer qemu-img the machine may ship; see HOST-NOTES),
#   - busybox-static, cpio, e2fsprogs, kmod (initramfs and app disks),
#   - Debian's kernel source (linux-source-6.1) and what builds it (build-essential,
#     flex, bison, libelf-dev, bc): the guest kernel is built from it once, by
#     `hitless images`, with the recipe in images/kernel/,
#   - vhost-device-vsock 0.3.0, patched (scripts/patches/), into a project-local cargo root (.tools/),
#   - the Debian cloud kernel package, downloaded and unpacked (no install),
#   - chromium (headless, renders and checks the HTML reports in tests) and
#     python3-junitparser (a test reads the JUnit XML with it).
# As root it runs apt-get; otherwise it prints the exact command and fails.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
tools="$here/.tools"
mkdir -p "$tools"

need_pkgs=()
command -v qemu-system-x86_64 >/dev/null || need_pkgs+=(qemu-system-x86 qemu-utils)
# qemu-img must come from the same QEMU release as qemu-system (block-extra conflicts).
if command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null; then
  sysv=$(qemu-system-x86_64 --version | sed -n '1s/.*version \([0-9]*\.[0-9]*\).*/\1/p')
  imgv=$(qemu-img --version | sed -n '1s/.*version \([0-9]*\.[0-9]*\).*/\1/p')
  [ "$sysv" = "$imgv" ] || need_pkgs+=(qemu-utils)
elif ! command -v qemu-img >/dev/null; then
  need_pkgs+=(qemu-utils)
fi
# grep reads the whole list: with -q it could exit first, and pipefail would count the SIGPIPE as a miss.
[ -e /bin/busybox ] && busybox --list 2>/dev/null | grep -x insmod >/dev/null || need_pkgs+=(busybox-static)
command -v cpio >/dev/null || need_pkgs+=(cpio)
command -v mkfs.ext4 >/dev/null || need_pkgs+=(e2fsprogs)
command -v depmod >/dev/null || need_pkgs+=(kmod)
[ -e /usr/share/qemu/qboot.rom ] || need_pkgs+=(qemu-system-data)
# Reports: headless Chromium loads report.html in a test; junitparser reads the JUnit XML.
command -v chromium >/dev/null || need_pkgs+=(chromium)
python3 -c 'import junitparser' 2>/dev/null || /usr/bin/python3 -c 'import junitparser' 2>/dev/null ||
  need_pkgs+=(python3-junitparser)
# The guest kernel's build (images/kernel/build.sh).
[ -f /usr/src/linux-source-6.1.tar.xz ] || need_pkgs+=(linux-source-6.1)
{ command -v gcc && command -v make && command -v readelf && command -v patch; } >/dev/null || need_pkgs+=(build-essential)
for t in flex bison bc; do command -v "$t" >/dev/null || need_pkgs+=("$t"); done
command -v xz >/dev/null || need_pkgs+=(xz-utils)
[ -f /usr/include/libelf.h ] || need_pkgs+=(libelf-dev)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  # De-duplicate while keeping order.
  pkgs=$(printf '%s\n' "${need_pkgs[@]}" | awk '!seen[$0]++' | tr '\n' ' ')
  if [ "$(id -u)" = 0 ]; then
    echo "setup: installing $pkgs"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Pin qemu-utils to qemu-system-x86's version: a newer qemu-utils (e.g. from
    # backports) Breaks the 7.2 qemu-system-common and apt gives up.
    qv=$(apt-cache policy qemu-system-x86 | sed -n 's/^ *Candidate: //p')
    pkgs=$(echo "$pkgs" | sed "s/qemu-utils/qemu-utils=$qv/")
    # shellcheck disable=SC2086
    apt-get install -y -qq --no-install-recommends --allow-downgrades $pkgs >/dev/null
  else
    echo "setup: missing packages; run as root:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends --allow-downgrades $pkgs" >&2
    echo "  (qemu-utils must match qemu-system-x86's version: qemu-utils=<that version>)" >&2
    exit 2
  fi
fi
if ! qemu-img --version >/dev/null 2>&1; then
  echo "setup: qemu-img is broken after install; run: apt-get install -y qemu-utils" >&2
  exit 2
fi

# vhost-device-vsock: the userspace vsock device (no kernel vhost-vsock here).
# 0.3.0 (the newest on crates.io) has bugs that leave a guest unreachable:
# it panics when the host closed a connection before the guest answered its
# CONNECT; its vring worker thread ends when host traffic arrives while the
# VM is stopped (QMP stop), or when the VM stops while it works; and an
# interrupt it signals while the VM is stopped is lost (with EVENT_IDX the
# guest then never reads its used ring again): the patch defers both until
# the rings run again. It is built from the crate as crates.io serves it
# (SHA-256 checked) with scripts/patches/vhost-device-vsock-0.3.0-*.patch.
# The stamp names the patches, so a daemon built without one is rebuilt.
vsock_patches=$(ls "$here"/scripts/patches/vhost-device-vsock-0.3.0-*.patch)
vsock_stamp="$tools/vhost-device-vsock.$(cat $vsock_patches | sha256sum | cut -c1-16)"
if ! [ -x "$tools/bin/vhost-device-vsock" ] || ! [ -f "$vsock_stamp" ]; then
  echo "setup: building vhost-device-vsock 0.3.0 (patched) into $tools (about a minute)"
  crate_sha256=52ce95d81af89ad693d067c650e42df0f217addfbc96cc4820f7c62eb4a28b13
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  url=https://static.crates.io/crates/vhost-device-vsock/vhost-device-vsock-0.3.0.crate
  if command -v curl >/dev/null; then
    curl -fsSL --max-time 120 -o "$src/crate.tar.gz" "$url"
  else
    python3 -c 'import sys, urllib.request; open(sys.argv[2], "wb").write(urllib.request.urlopen(sys.argv[1], timeout=120).read())' "$url" "$src/crate.tar.gz"
  fi
  echo "$crate_sha256  $src/crate.tar.gz" | sha256sum -c --quiet - ||
    { echo "setup: $url is not the crate it should be (SHA-256)" >&2; rm -rf "$src"; exit 2; }
  tar -xzf "$src/crate.tar.gz" -C "$src"
  for p in $vsock_patches; do
    (cd "$src/vhost-device-vsock-0.3.0" && patch -s -p1 < "$p")
  done
  cargo install --quiet --path "$src/vhost-device-vsock-0.3.0" --locked --force --root "$tools"
  rm -rf "$src" "$tools"/vhost-device-vsock.*
  touch "$vsock_stamp"
fi

# Debian's cloud kernel, unpacked (not installed) into .tools/kernel.
if ! [ -f "$tools/kernel/.done" ]; then
  echo "setup: downloading Debian's cloud kernel package"
  rm -rf "$tools/kernel" "$tools/kernel.dl" && mkdir -p "$tools/kernel.dl"
  meta=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1)
  if [ -z "$meta" ]; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq; fi
    meta=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/.*Depends: \(linux-image-[0-9].*-cloud-amd64\)$/\1/p' | head -1)
  fi
  [ -n "$meta" ] || { echo "setup: cannot resolve linux-image-cloud-amd64 (apt-get update?)" >&2; exit 2; }
  (cd "$tools/kernel.dl" && apt-get download "$meta" >/dev/null)
  dpkg -x "$tools"/kernel.dl/*.deb "$tools/kernel"
  rm -rf "$tools/kernel.dl"
  touch "$tools/kernel/.done"
fi
echo "setup: ok ($(qemu-system-x86_64 --version | head -1))"
