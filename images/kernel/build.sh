#!/bin/bash
# Build the hitless guest kernel: an ELF `vmlinux` with a PVH entry note, which
# QEMU boots directly with `-kernel` (no bzImage setup code, no decompression).
# The orchestrator runs it (`hitless images`) from a copy of this directory and
# caches the result by the content of its inputs; it also runs by hand:
#
#   images/kernel/build.sh OUT_DIR
#
# Inputs (nothing else is read):
#   $TARBALL (default /usr/src/linux-source-6.1.tar.xz)   Debian package linux-source-6.1
#   config.fragment (this directory)                       options on top of tinyconfig
#   *.patch (this directory, in name order)                applied with patch -p1
# Debian packages needed:
#   apt-get install -y linux-source-6.1 build-essential flex bison libelf-dev bc
# Output: OUT_DIR/vmlinux, OUT_DIR/config (the final .config), OUT_DIR/config.log,
# OUT_DIR/build.log (make's output: one line per build step; the orchestrator
# counts them to show progress). The build tree (OUT_DIR/src, ~1.6 GB) is removed at the end unless
# KEEP_TREE=1. JOBS (default: nproc) sets make's parallelism.
#
# Deterministic: a fresh tree every time, fixed build user/host/timestamp, no
# interactive kconfig prompts (olddefconfig), every fragment option verified.
# Two builds from the same inputs give the same vmlinux.
set -euo pipefail

RECIPE=$(cd "$(dirname "$0")" && pwd)
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
OUT=$(realpath -m "$1")
TARBALL=${TARBALL:-/usr/src/linux-source-6.1.tar.xz}
FRAGMENT=$RECIPE/config.fragment
JOBS=${JOBS:-$(nproc)}

start=$(date +%s)
for tool in gcc make flex bison bc perl tar xz patch readelf; do
	command -v "$tool" >/dev/null || { echo "build.sh: $tool missing (apt-get install -y build-essential flex bison bc xz-utils)" >&2; exit 1; }
done
[ -f /usr/include/libelf.h ] || { echo "build.sh: libelf-dev missing (objtool needs it: apt-get install -y libelf-dev)" >&2; exit 1; }
[ -f "$TARBALL" ] || { echo "build.sh: $TARBALL missing (apt-get install -y linux-source-6.1)" >&2; exit 1; }

mkdir -p "$OUT"
SRC=$OUT/src
rm -rf "$SRC"
mkdir -p "$SRC"
echo "== unpacking $TARBALL"
tar -xf "$TARBALL" -C "$SRC" --strip-components=1

cd "$SRC"
for p in $(cd "$RECIPE" && ls -1 ./*.patch 2>/dev/null | sort); do
	echo "== applying ${p#./}"
	patch -p1 --forward --no-backup-if-mismatch --quiet < "$RECIPE/$p"
done

export ARCH=x86_64
export KBUILD_BUILD_USER=hitless KBUILD_BUILD_HOST=hitless KBUILD_BUILD_VERSION=1
export KBUILD_BUILD_TIMESTAMP="Thu Jan  1 00:00:00 UTC 1970"

echo "== configuring: tinyconfig + config.fragment"
{
	make -s tinyconfig &&
	scripts/kconfig/merge_config.sh -m .config "$FRAGMENT" &&
	make -s olddefconfig
} > "$OUT/config.log" 2>&1 || { tail -30 "$OUT/config.log" >&2; exit 1; }

# Every option of the fragment must be in the final .config as written.
bad=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=*)
		grep -qxF -- "$line" .config || { echo "build.sh: dropped: $line (got: $(grep -E "^(# )?${line%%=*}[= ]" .config || echo absent))" >&2; bad=1; } ;;
	"# CONFIG_"*" is not set")
		opt=${line#\# }; opt=${opt%% *}
		if grep -q "^$opt=" .config; then echo "build.sh: not unset: $opt ($(grep "^$opt=" .config))" >&2; bad=1; fi ;;
	esac
done < "$FRAGMENT"
[ $bad = 0 ] || { echo "build.sh: the fragment did not apply as written" >&2; exit 1; }
cp .config "$OUT/config"

echo "== make -j$JOBS vmlinux (a few minutes)"
b0=$(date +%s)
if ! make -j"$JOBS" vmlinux > "$OUT/build.log" 2>&1; then
	tail -30 "$OUT/build.log" >&2
	exit 1
fi
b1=$(date +%s)
cp vmlinux "$OUT/vmlinux"

# The PVH entry is the Xen ELF note XEN_ELFNOTE_PHYS32_ENTRY (type 0x12).
if ! readelf -n "$OUT/vmlinux" | grep -q "Xen.*0x00000012"; then
	echo "build.sh: vmlinux has no PVH note (XEN_ELFNOTE_PHYS32_ENTRY)" >&2
	exit 1
fi
cd "$OUT"
[ -n "${KEEP_TREE:-}" ] || rm -rf "$SRC"
end=$(date +%s)
echo "== done: $OUT/vmlinux ($(stat -c %s "$OUT/vmlinux") bytes, sha256 $(sha256sum "$OUT/vmlinux" | cut -c1-16)) in $((end - start)) s (make vmlinux $((b1 - b0)) s, $JOBS jobs)"
