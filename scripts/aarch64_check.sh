#!/bin/bash
# The same-bits check and the tests on aarch64 (NEON and the scalar path), on an x86-64
# machine, under QEMU's user-mode emulation (which computes IEEE arithmetic exactly, so the bits
# are those of real hardware; the speed is not). CI (`.ci/run`) runs part of it: the
# fingerprints and the library's and half-precision suites. This script runs every suite, in
# release builds, which takes about 20 minutes on a 2-core machine. It needs a cross linker,
# QEMU and the aarch64 standard library.
#
#   rustup target add aarch64-unknown-linux-gnu
#   sudo apt-get install gcc-aarch64-linux-gnu qemu-user     # Debian / Ubuntu
#   bash scripts/aarch64_check.sh
#
# Prints the fingerprint of `same_bits` under NEON (the default there) and the scalar cap, next
# to this machine's own, and runs the tests (release build; `LAYERNORM_MAX_ISA=scalar` too for
# the library's). Every fingerprint must be the same line.
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
run="qemu-aarch64 -L /usr/aarch64-linux-gnu"

cargo build --release --features half --example same_bits
cargo build --release --features half --example same_bits --target "$target"
echo "same_bits, this machine: $(target/release/examples/same_bits | tail -1)"
for cap in default scalar; do
    echo "same_bits, aarch64 ($cap): $(LAYERNORM_MAX_ISA=$cap $run \
        "target/$target/release/examples/same_bits" | tail -1)"
done

# The tests: every suite once, then the library's (kernels against the specification, every
# instruction set present) and the thread-independence suite on the scalar path as well.
cargo test --release --all-features --target "$target"
LAYERNORM_MAX_ISA=scalar cargo test --release --all-features --target "$target" --lib --test threads
