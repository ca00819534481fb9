#!/bin/bash
# One run on a lent many-core machine (see the device tool's README): the same-bits check under
# every instruction-set cap, the kernel tests, a 1-16 thread sweep with same-run ceilings, the
# static schedule (LAYERNORM_SCHEDULE=static), both store paths (half precision too), the rayon
# hand-off cost, calls from outside any pool, and PyTorch side by side when it is installed there.
# Nothing is built there: first build here and put the binaries in devrun/bin (ignored by git):
#
#   cargo build --release --features half --example bench_json --example same_bits
#   cargo test --release --all-features --lib --test threads --no-run  # prints both paths
#   mkdir -p devrun/bin && cp target/release/examples/{bench_json,same_bits} devrun/bin/
#   cp <lib test binary> devrun/bin/lib_tests
#   cp <threads test binary> devrun/bin/threads_tests
#   cargo test --features half --lib --no-run   # the debug lib tests: stack frames on AVX-512
#   cp <that debug lib test binary> devrun/bin/lib_tests_debug
#   cp scripts/compare_pytorch.py scripts/device_check.sh devrun/ && strip devrun/bin/*
#
# then run `bash devrun/device_check.sh` with carry ["devrun"] and a timeout of about 540 s:
# everything comes back as one $OUT/all.tgz (the device returns only a few files). It took
# 281 s on 2026-11-29 (16-core Xeon).
cd "$(dirname "$0")"
B=./bin
O=$(mktemp -d)
J="--samples 7 --sample-ms 30"
start=$(date +%s)
# Stop everything by BUDGET seconds (default 480), so that what was measured comes back
# before the device call's own limit; $OUT/all.tgz is rewritten after every stage.
BUDGET=${BUDGET:-480}
save() { tar czf "${OUT:-/tmp}/all.tgz" -C "$O" .; }
t() { echo "[$(( $(date +%s) - start ))s] $*" >> "$O/log.txt"; save; }
# The seconds a stage may run: at most $1, never past the budget.
cap() { local left=$(( BUDGET - ($(date +%s) - start) )); (( left < $1 )) && echo $(( left > 1 ? left : 1 )) || echo "$1"; }
lscpu > "$O/lscpu.txt" 2>&1
nproc >> "$O/lscpu.txt"
t same-bits
for setting in LAYERNORM_MAX_ISA=scalar LAYERNORM_MAX_ISA=avx2 LAYERNORM_MAX_ISA=avx512 \
    LAYERNORM_MAX_ISA=default LAYERNORM_STORES=streaming; do
  echo "$setting $(env "$setting" timeout "$(cap 40)" "$B/same_bits" | tail -1)"
done > "$O/same_bits.txt"
t lib-tests
timeout "$(cap 90)" "$B/lib_tests" > "$O/lib_tests.txt" 2>&1; echo "rc=$?" >> "$O/lib_tests.txt"
timeout "$(cap 90)" "$B/threads_tests" > "$O/threads_tests.txt" 2>&1; echo "rc=$?" >> "$O/threads_tests.txt"
LAYERNORM_SCHEDULE=static timeout "$(cap 60)" "$B/threads_tests" > "$O/threads_static.txt" 2>&1
echo "rc=$?" >> "$O/threads_static.txt"
# Unoptimized kernels on AVX-512, whose debug frames once exceeded a thread's 2 MiB stack
# (BENCHMARKS "Stack frames in debug builds"); the test binary's small-stack test and the rest.
if [ -x "$B/lib_tests_debug" ]; then
  timeout "$(cap 120)" "$B/lib_tests_debug" > "$O/lib_tests_debug.txt" 2>&1
  echo "rc=$?" >> "$O/lib_tests_debug.txt"
fi
t sweep
timeout "$(cap 170)" "$B/bench_json" --threads 1,2,4,8,16 \
  --shapes 512x1024,4096x1024,8192x4096,65536x64,32768x4096 \
  --ops forward,backward,memcpy,three_stream --samples 11 --sample-ms 40 \
  > "$O/sweep.jsonl" 2> "$O/sweep.txt"
t schedule
# The same sweep's in-cache shapes with one fixed share of rows per thread (rayon::broadcast,
# OpenMP's static schedule) instead of work stealing: whether a thread that finds its rows'
# outputs in its own L2 from the previous call scales 512x1024 further (same bits).
LAYERNORM_SCHEDULE=static timeout "$(cap 60)" "$B/bench_json" --threads 1,2,4,8,16 \
  --shapes 512x1024,4096x1024 --ops forward,backward $J \
  > "$O/schedule_static.jsonl" 2> "$O/schedule_static.txt"
t isa
# The cost of the 16-lane kernels against the 8-lane ones on the same machine (same bits).
for isa in avx2 default avx2 default; do
  echo "## LAYERNORM_MAX_ISA=$isa" >> "$O/isa.txt"
  LAYERNORM_MAX_ISA=$isa timeout "$(cap 30)" "$B/bench_json" --threads 1 \
    --shapes 512x1024,65536x64,2048x64 --ops forward,backward $J 2>> "$O/isa.txt" >/dev/null
done
t half
timeout "$(cap 60)" "$B/bench_json" --threads 1 --types f32,f16,bf16 \
  --shapes 512x1024,4096x1024,8192x4096 --ops forward,backward $J > "$O/half.jsonl" 2> "$O/half.txt"
t pytorch
# Three rounds, the crate and PyTorch alternately (medians of the per-round ratios).
if python3 -c "import torch" 2>/dev/null; then
  timeout "$(cap 150)" python3 compare_pytorch.py --crate-bin "$B/bench_json" --rounds 3 \
    --threads 1,2,4,8,16 --shapes 512x1024,4096x1024,8192x4096,65536x64 $J \
    --json-out "$O/pytorch.jsonl" > "$O/pytorch.md" 2> "$O/pytorch.txt"
  t pytorch-half
  timeout "$(cap 60)" python3 compare_pytorch.py --crate-bin "$B/bench_json" --rounds 3 \
    --threads 1 --types f16,bf16 --shapes 512x1024,4096x1024,8192x4096 $J \
    --json-out "$O/pytorch_half.jsonl" > "$O/pytorch_half.md" 2> "$O/pytorch_half.txt"
fi
t rayon
timeout "$(cap 20)" "$B/bench_json" --threads 2,4,8,16 --shapes 512x1024 --ops rayon_overhead $J \
  > "$O/rayon.jsonl" 2> "$O/rayon.txt"
t outside
# The same calls from the main thread, outside any pool, as most programs make them: each
# parallel call is handed to the global pool (16 threads) and waited for (BENCHMARKS "Calls
# from outside the pool").
timeout "$(cap 20)" "$B/bench_json" --from-outside --threads 16 --shapes 512x1024,4096x1024 \
  --ops forward,backward $J > "$O/outside.jsonl" 2> "$O/outside.txt"
t stores
for stores in cached streaming; do
  LAYERNORM_STORES=$stores timeout "$(cap 40)" "$B/bench_json" --threads 1,16 \
    --shapes 4096x1024,8192x4096,32768x4096 --ops forward,backward $J \
    > "$O/stores_$stores.jsonl" 2> "$O/stores_$stores.txt"
  # Half precision keeps ordinary stores by default (streaming cost 1.2-1.3x on the 2-core
  # VM at one and two threads); whether 16 threads gain from streaming is open.
  LAYERNORM_STORES=$stores timeout "$(cap 20)" "$B/bench_json" --threads 1,16 --types f16,bf16 \
    --shapes 8192x4096 --ops forward,backward $J \
    > "$O/stores_half_$stores.jsonl" 2> "$O/stores_half_$stores.txt"
done
t done
