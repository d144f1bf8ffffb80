#!/usr/bin/env bash
# Builds the inference-only allconv (`--no-default-features --features edge`: tract,
# images, DICOM; no HDF5, no libtorch, no protobuf writer) for a device's target, from
# this x86_64 machine:
#
#   scripts/cross.sh aarch64-unknown-linux-gnu      # Raspberry Pi 4/5 (64-bit OS), Jetson, Graviton
#   scripts/cross.sh armv7-unknown-linux-gnueabihf  # 32-bit Raspberry Pi OS
#   scripts/cross.sh x86_64-unknown-linux-musl      # fully static x86_64: any Linux, no libc needed
#   scripts/cross.sh aarch64-unknown-linux-musl     # fully static aarch64
#   scripts/cross.sh x86_64-unknown-linux-gnu       # the same edge build for this machine
#
# Installs what it needs (the Rust target by rustup, the C cross toolchain and qemu-user
# from Debian's packages: tract-linalg assembles its kernels with the target's gcc), then
# prints the path of the stripped binary. Copy that one file and a model to the device.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:?usage: scripts/cross.sh TARGET}"

case "$target" in
  aarch64-unknown-linux-gnu)     pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross"; cc=aarch64-linux-gnu-gcc ;;
  aarch64-unknown-linux-musl)    pkgs="gcc-aarch64-linux-gnu"; cc=aarch64-linux-gnu-gcc ;;
  armv7-unknown-linux-gnueabihf) pkgs="gcc-arm-linux-gnueabihf libc6-dev-armhf-cross"; cc=arm-linux-gnueabihf-gcc ;;
  x86_64-unknown-linux-musl)     pkgs="musl-tools"; cc=musl-gcc ;;
  x86_64-unknown-linux-gnu)      pkgs=""; cc=gcc ;;
  *) echo "cross.sh: unsupported target $target" >&2; exit 2 ;;
esac

need=""
for p in $pkgs qemu-user; do
  dpkg -s "$p" >/dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
  echo "cross.sh: installing$need (Debian)" >&2
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get install -y -q $need >/dev/null 2>&1 || {
    $sudo_ apt-get update -q >/dev/null 2>&1; $sudo_ apt-get install -y -q $need >/dev/null; }
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target" >&2

# cargo's per-target variables: the C compiler (cc crate) and the linker.
t_upper=$(echo "$target" | tr 'a-z-' 'A-Z_')
t_lower=$(echo "$target" | tr '-' '_')
# The host's own target keeps cargo's defaults: setting CC_x86_64_unknown_linux_gnu would
# change the build scripts' fingerprints and rebuild every other target next time.
[ "$target" = x86_64-unknown-linux-gnu ] || export "CC_${t_lower}=$cc"
case "$target" in
  # Rust links its own self-contained musl (crt objects and libc.a): one static file.
  # musl-gcc as the linker would turn that into a dynamic PIE asking for ld-musl (seen
  # here: it segfaulted at start), so x86_64 keeps the host cc as the linker driver.
  x86_64-unknown-linux-musl | x86_64-unknown-linux-gnu) ;;
  *) export "CARGO_TARGET_${t_upper}_LINKER=$cc" ;;
esac
case "$target" in
  *-musl) export "CARGO_TARGET_${t_upper}_RUSTFLAGS=-C target-feature=+crt-static" ;;
esac

cargo build --profile edge --no-default-features --features edge --bin allconv \
  --target "$target" ${ALLCONV_CROSS_QUIET:+--quiet} >&2
echo "target/$target/edge/allconv"
