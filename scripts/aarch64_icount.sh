#!/bin/bash
# Instructions per call of the aarch64 kernels, counted under QEMU's user-mode emulation with
# the plugin in scripts/qemu_icount.c (no aarch64 hardware needed; timings under emulation
# mean nothing, instruction counts do). Needs what scripts/aarch64_check.sh needs, and gcc.
#
#   bash scripts/aarch64_icount.sh [--types f32,f16,bf16] [--shapes 512x1024] [--ops forward]
#
# Runs `bench_json` (aarch64, one thread) with 2 and with 6 samples of one call each and prints
# the difference over 4: instructions per call, set-up excluded. Set LAYERNORM_MAX_ISA=scalar
# to count the scalar path.
set -euo pipefail
cd "$(dirname "$0")/.."
types=f32,f16,bf16 shapes=512x1024 ops=forward,backward
while [ $# -gt 0 ]; do
    case "$1" in
        --types) types=$2 ;;
        --shapes) shapes=$2 ;;
        --ops) ops=$2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift 2
done
target=aarch64-unknown-linux-gnu
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
plugin=$(mktemp -d)/qemu_icount.so
gcc -shared -fPIC -O2 -o "$plugin" scripts/qemu_icount.c
cargo build --release --features half --example bench_json --target "$target"
bin="target/$target/release/examples/bench_json"
count() { # samples op shape type
    qemu-aarch64 -L /usr/aarch64-linux-gnu -plugin "$plugin" "$bin" --threads 1 \
        --shapes "$3" --ops "$2" --types "$4" --samples "$1" --sample-ms 0 2>&1 >/dev/null |
        sed -n 's/^guest instructions: //p'
}
for op in ${ops//,/ }; do for shape in ${shapes//,/ }; do for type in ${types//,/ }; do
    few=$(count 2 "$op" "$shape" "$type")
    many=$(count 6 "$op" "$shape" "$type")
    echo "$op $shape $type: $(( (many - few) / 4 )) instructions per call"
done; done; done
