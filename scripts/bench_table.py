#!/usr/bin/env python3
"""Turn criterion's results (target/criterion) into the markdown tables of BENCHMARKS.md.

Reads every benchmark's median time and byte count, and prints, per dtype and operation, one
row per shape: GB/s of the crate's kernel and of the memory ceiling measured in the same run,
for one and two threads, and their ratio. Usage: python3 scripts/bench_table.py [criterion dir]
"""
import json
import pathlib
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "target/criterion")
results = {}
for bench in root.glob("**/new/benchmark.json"):
    meta = json.loads(bench.read_text())
    estimates = json.loads((bench.parent / "estimates.json").read_text())
    median_ns = estimates["median"]["point_estimate"]
    bytes_moved = (meta.get("throughput") or {}).get("Bytes")
    if not bytes_moved:
        continue
    group = meta["group_id"]  # e.g. forward/f32
    function, _, threads = meta["function_id"].rpartition("/")
    shape = meta["value_str"]
    results[(group, function, threads, shape)] = bytes_moved / median_ns  # GB/s


def shapes_of(group):
    shapes = {key[3] for key in results if key[0] == group}
    return sorted(shapes, key=lambda s: [int(v) for v in s.split("x")])


operations = {
    "forward": ("forward_into", "ceiling_a_x_plus_b"),
    "backward": ("backward_into", "ceiling_3_stream"),
}
for group in sorted({key[0] for key in results}):
    operation, dtype = group.split("/")
    if operation not in operations:
        continue  # residual/, rms_norm/, half/: tables of their own in BENCHMARKS.md
    kernel, ceiling = operations[operation]
    print(f"\n### {operation}, {dtype} (GB/s; in parentheses, the fraction of the ceiling)\n")
    extra = "forward (allocating) 1t | " if operation == "forward" else ""
    print(f"| shape | {kernel} 1t | ceiling 1t | {kernel} 2t | ceiling 2t | 2t / 1t | {extra}naive ndarray 1t |")
    print("|---|---|---|---|---|---|" + ("---|" if extra else "") + "---|")
    for shape in shapes_of(group):
        get = lambda function, threads: results.get((group, function, threads, shape))
        k1, c1, k2, c2 = get(kernel, "1t"), get(ceiling, "1t"), get(kernel, "2t"), get(ceiling, "2t")
        cell = lambda k, c: f"{k:.1f} ({k / c:.2f})" if k and c else "–"
        scaling = f"{k2 / k1:.2f}×" if k1 and k2 else "–"
        allocating = get("forward", "1t")
        extra_cell = (f"{allocating:.1f} | " if allocating else "– | ") if extra else ""
        naive = get("naive_ndarray", "1t")
        naive_cell = f"{naive:.2f}" if naive else "–"
        print(f"| {shape} | {cell(k1, c1)} | {c1 or 0:.1f} | {cell(k2, c2)} | {c2 or 0:.1f} | {scaling} | {extra_cell}{naive_cell} |")
