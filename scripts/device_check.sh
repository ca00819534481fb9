#!/bin/bash
# One run on a lent many-core machine (see the device tool's README): the same-bits check under
# every instruction-set cap, the kernel tests, a 1-16 thread sweep with same-run ceilings, both
# store paths, the rayon hand-off cost and PyTorch side by side when it is installed there.
# Nothing is built there: first build here and put the binaries in devrun/bin (ignored by git):
#
#   cargo build --release --features half --example bench_json --example same_bits
#   cargo test --release --all-features --lib --no-run   # prints the lib test binary's path
#   mkdir -p devrun/bin && cp target/release/examples/{bench_json,same_bits} devrun/bin/
#   cp <lib test binary> devrun/bin/lib_tests && cp scripts/compare_pytorch.py devrun/
#   cp scripts/device_check.sh devrun/ && strip devrun/bin/*
#
# then run `bash devrun/device_check.sh` with carry ["devrun"]: everything comes back as one
# $OUT/all.tgz (the device returns only a few files).
cd "$(dirname "$0")"
B=./bin
O=$(mktemp -d)
J="--samples 7 --sample-ms 30"
start=$(date +%s)
t() { echo "[$(( $(date +%s) - start ))s] $*" >> "$O/log.txt"; }
lscpu > "$O/lscpu.txt" 2>&1
t same-bits
for setting in LAYERNORM_MAX_ISA=scalar LAYERNORM_MAX_ISA=avx2 LAYERNORM_MAX_ISA=avx512 \
    LAYERNORM_MAX_ISA=default LAYERNORM_STORES=streaming; do
  echo "$setting $(env "$setting" timeout 120 "$B/same_bits" | tail -1)"
done > "$O/same_bits.txt"
t lib-tests
timeout 180 "$B/lib_tests" > "$O/lib_tests.txt" 2>&1; echo "rc=$?" >> "$O/lib_tests.txt"
t sweep
timeout 200 "$B/bench_json" --threads 1,2,4,8,16 \
  --shapes 512x1024,4096x1024,8192x4096,65536x64,32768x4096 \
  --ops forward,backward,memcpy,three_stream $J > "$O/sweep.jsonl" 2> "$O/sweep.txt"
t stores
for stores in cached streaming; do
  LAYERNORM_STORES=$stores timeout 90 "$B/bench_json" --threads 1,16 \
    --shapes 4096x1024,8192x4096,32768x4096 --ops forward,backward $J \
    > "$O/stores_$stores.jsonl" 2> "$O/stores_$stores.txt"
done
timeout 30 "$B/bench_json" --threads 2,4,8,16 --shapes 512x1024 --ops rayon_overhead $J \
  > "$O/rayon.jsonl" 2> "$O/rayon.txt"
t half
timeout 90 "$B/bench_json" --threads 1 --types f32,f16,bf16 --shapes 512x1024,4096x1024,8192x4096 \
  --ops forward,backward $J > "$O/half.jsonl" 2> "$O/half.txt"
t pytorch
if python3 -c "import torch" 2>/dev/null; then
  timeout 200 python3 compare_pytorch.py --crate-json "$O/sweep.jsonl" --threads 1,4,16 \
    --shapes 512x1024,4096x1024,8192x4096,65536x64 $J > "$O/pytorch.md" 2> "$O/pytorch.txt"
fi
t done
tar czf "${OUT:-/tmp}/all.tgz" -C "$O" .
