#!/usr/bin/env bash
# Quick start, step one: install what mkspawn needs on a fresh Debian machine, create the
# virtualenv, and build the demo recipe's signed bundle into build/demo.mkb.
#   ./setup.sh              everything
#   ./setup.sh --deps-only  packages and venv only (what CI needs before the tests)
set -euo pipefail
cd "$(dirname "$0")"

APT_PACKAGES=(
  # kernel builds (make/kconfig from Debian's linux-source tarballs)
  build-essential bc bison flex libelf-dev libssl-dev ccache cpio kmod linux-source-6.12 xz-utils
  # arm64 cross builds (ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-) and their boot test
  gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-system-arm
  # initramfs userland and compressors the kernel unpacks
  busybox-static gzip zstd lz4
  # device trees, ACPI tables, Authenticode, boot checks
  device-tree-compiler acpica-tools sbsigntool qemu-system-x86
  # build farms: a shared ccache remote storage and distributed compilation (docs/build-farms.md)
  redis-server distcc
  # OCI registry (distribution) and an independent client for the push/pull tests
  docker-registry apache2-utils skopeo curl
  # an HTTP proxy (CONNECT and plain) for the push/pull-through-a-proxy tests
  tinyproxy
  # python
  python3 python3-venv python3-pip
  git patch tar
)

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The tests start their own tinyproxy on a random port; the packaged service is not ours.
if [ -d /run/systemd/system ]; then as_root systemctl disable --now tinyproxy >/dev/null 2>&1 || true; fi

# Debian's own python3 (/usr/bin/python3), so the venv matches the packages above.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'

[ "${1:-}" = "--deps-only" ] && exit 0

config_dir="${XDG_CONFIG_HOME:-$HOME/.config}/mkspawn"
key="$config_dir/keys/demo.pem"
if [ ! -f "$key" ]; then
  mkdir -p "$config_dir/keys" "$config_dir/trust"
  .venv/bin/mkspawn keygen -o "$key"
  cp "$config_dir/keys/demo.pub.pem" "$config_dir/trust/demo.pub.pem"
fi
mkdir -p build
.venv/bin/mkspawn -v build recipes/demo.toml -o build/demo.mkb --key "$key"
.venv/bin/mkspawn verify build/demo.mkb
.venv/bin/mkspawn inspect build/demo.mkb
.venv/bin/mkspawn check build/demo.mkb --recipe recipes/demo.toml
