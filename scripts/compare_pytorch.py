#!/usr/bin/env python3
"""layernorm against PyTorch's CPU LayerNorm kernels, side by side, on one machine.

Times `torch.ops.aten.native_layer_norm` and `native_layer_norm_backward` (the kernels behind
`torch.nn.functional.layer_norm` and its autograd) on the shapes and thread counts given, and
prints their GB/s next to the crate's `forward_into` / `backward_into` from the `bench_json`
example, run in the same way (median of samples of repeated calls on reused buffers, after a
warm-up). GB/s count the bytes that must move, in the type's own size: forward 2 per element
(read x, write y), backward 3 (read x and dy, write dx), as the crate's benchmarks do.

Not part of CI: PyTorch is a large install.

    python3 -m venv /tmp/torch && /tmp/torch/bin/pip install torch numpy
    /tmp/torch/bin/python scripts/compare_pytorch.py --threads 1,2
    # f16/bf16 too (the crate side needs the `half` feature, which the script turns on):
    /tmp/torch/bin/python scripts/compare_pytorch.py --threads 1 --types f32,f16,bf16
    # with crate numbers measured elsewhere (bench_json's stdout saved to a file):
    /tmp/torch/bin/python scripts/compare_pytorch.py --crate-json crate.jsonl
    # alternating the two sides five times, with a bench_json binary built beforehand:
    /tmp/torch/bin/python scripts/compare_pytorch.py --rounds 5 \
        --crate-bin target/release/examples/bench_json

PyTorch is timed twice: through the `.out` overloads into tensors reused across calls (the
kernels alone, as the crate's `*_into` calls), and allocating its outputs on every call, as
autograd does (large fresh outputs then cost page faults). The PyTorch backward computes dx,
dgain and dbias, as the crate's benchmark does.

PyTorch is called from the main thread, as programs call it. The crate's calls are made on a
thread of a rayon pool, unless `--from-outside` makes them from the main thread too (each
parallel call then pays its hand-off to rayon's global pool; BENCHMARKS.md, "Calls from outside
the pool").

On a shared machine the speed of both sides drifts between runs. `--rounds N` runs the crate
and PyTorch alternately N times; the table then gives each side's median over the rounds and
the lowest and highest of the per-round ratios, which is the honest spread of the comparison.

PyTorch's CPU allocator puts every tensor on a 64-byte cache line; the crate's benchmark arrays
lie where the system allocator puts them (glibc: 16 bytes past a line), which on some CPUs
costs the crate 10-30 % (BENCHMARKS.md, "Where the caller's arrays lie"). `--line-offset 0`
places the crate's arrays on lines too, for a comparison of the kernels at the same placement.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

DEFAULT_SHAPES = "512x1024,4096x1024,8192x4096,65536x64"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", default="1", help="comma-separated thread counts")
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated ROWSxCOLS")
    parser.add_argument("--types", default="f32", help="f32, f16, bf16 (comma-separated)")
    parser.add_argument("--samples", type=int, default=11)
    parser.add_argument("--sample-ms", type=int, default=40)
    parser.add_argument(
        "--crate-json",
        help="bench_json output to compare against (default: run the example now with cargo)",
    )
    parser.add_argument(
        "--crate-bin",
        help="a bench_json binary built beforehand, run instead of `cargo run --example`",
    )
    parser.add_argument(
        "--line-offset",
        type=int,
        help="place the crate's x, dy and output this many bytes past a 64-byte line (bench_json"
        " --line-offset); PyTorch's CPU allocator puts every tensor on a 64-byte line, so 0 gives"
        " both sides the same placement. By default the crate's arrays lie where the system"
        " allocator puts them (glibc: 16 bytes past a line for large arrays)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the crate and PyTorch alternately this many times (not with --crate-json)",
    )
    parser.add_argument(
        "--from-outside",
        action="store_true",
        help="the crate's calls made from the main thread, outside any rayon pool, as PyTorch's"
        " are (bench_json --from-outside, run once per thread count); by default they are made"
        " on a thread of the pool",
    )
    parser.add_argument("--json-out", help="also write every measurement here as JSON lines")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.rounds > 1 and args.crate_json:
        parser.error("--rounds alternates with fresh crate runs: drop --crate-json")
    if args.from_outside and args.crate_json:
        parser.error("--from-outside is how bench_json is run: drop --crate-json")
    return args


def median_seconds(work, samples, sample_ms):
    """Median seconds per call: a warm-up that also sizes the samples, then `samples` samples."""
    start = time.perf_counter()
    calls = 0
    while calls < 3 or time.perf_counter() - start < sample_ms / 1e3:
        work()
        calls += 1
    per_call = (time.perf_counter() - start) / calls
    per_sample = max(1, int(sample_ms / 1e3 / per_call))
    times = []
    for _ in range(max(1, samples)):
        start = time.perf_counter()
        for _ in range(per_sample):
            work()
        times.append((time.perf_counter() - start) / per_sample)
    return statistics.median(times)


def torch_measurements(args):
    import torch

    dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
    results = []
    generator = torch.Generator().manual_seed(1)
    for type_name in args.types.split(","):
        dtype = dtypes[type_name]
        size = torch.tensor([], dtype=dtype).element_size()
        for shape in args.shapes.split(","):
            rows, cols = (int(v) for v in shape.split("x"))
            x = (torch.rand(rows, cols, generator=generator) * 4 - 1).to(dtype)
            dy = (torch.rand(rows, cols, generator=generator) * 4 - 1).to(dtype)
            gain = torch.full((cols,), 1.5, dtype=dtype)
            bias = torch.full((cols,), 0.25, dtype=dtype)
            y, mean, rstd = torch.ops.aten.native_layer_norm(x, [cols], gain, bias, 1e-5)
            dx, dgain, dbias = torch.ops.aten.native_layer_norm_backward(
                dy, x, [cols], mean, rstd, gain, bias, [True, True, True]
            )
            mean_out, rstd_out = mean.clone(), rstd.clone()
            calls = {
                # As autograd calls them: fresh output tensors on every call.
                ("forward", "allocating"): lambda: torch.ops.aten.native_layer_norm(
                    x, [cols], gain, bias, 1e-5
                ),
                ("backward", "allocating"): lambda: torch.ops.aten.native_layer_norm_backward(
                    dy, x, [cols], mean, rstd, gain, bias, [True, True, True]
                ),
                # The kernels alone: outputs written into tensors reused across calls, as the
                # crate's forward_into / backward_into do.
                ("forward", "out"): lambda: torch.ops.aten.native_layer_norm.out(
                    x, [cols], gain, bias, 1e-5, out0=y, out1=mean_out, out2=rstd_out
                ),
                ("backward", "out"): lambda: torch.ops.aten.native_layer_norm_backward.out(
                    dy, x, [cols], mean, rstd, gain, bias, [True, True, True],
                    out0=dx, out1=dgain, out2=dbias,
                ),
            }  # fmt: skip
            for threads in (int(t) for t in args.threads.split(",")):
                torch.set_num_threads(threads)
                line = []
                for (op, form), call in calls.items():
                    with torch.no_grad():
                        seconds = median_seconds(call, args.samples, args.sample_ms)
                    streams = 2 if op == "forward" else 3
                    gbps = streams * rows * cols * size / seconds / 1e9
                    results.append(
                        {
                            "impl": "pytorch",
                            "form": form,
                            "op": op,
                            "type": type_name,
                            "rows": rows,
                            "cols": cols,
                            "threads": threads,
                            "median_s": seconds,
                            "gbps": gbps,
                        }
                    )
                    line.append(f"{op} {form} {gbps:.2f}")
                print(f"pytorch {type_name} {shape} {threads}t: " + ", ".join(line), file=sys.stderr)
    return results


def crate_measurements(args):
    if args.crate_json:
        with open(args.crate_json) as lines:
            text = lines.read()
    else:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        if args.crate_bin:
            command = [os.path.abspath(args.crate_bin)]
        else:
            command = ["cargo", "run", "--release", "--quiet"]
            if any(t in ("f16", "bf16") for t in args.types.split(",")):
                command += ["--features", "half"]
            command += ["--example", "bench_json", "--"]
        command += [
            "--shapes", args.shapes,
            "--types", args.types,
            "--ops", "forward,backward",
            "--samples", str(args.samples),
            "--sample-ms", str(args.sample_ms),
        ]  # fmt: skip
        if args.line_offset is not None:
            command += ["--line-offset", str(args.line_offset)]
        # From outside, bench_json builds rayon's global pool: one thread count per run.
        if args.from_outside:
            runs = [["--from-outside", "--threads", t] for t in args.threads.split(",")]
        else:
            runs = [["--threads", args.threads]]
        text = "".join(
            subprocess.run(
                command + run, cwd=root, check=True, stdout=subprocess.PIPE, text=True
            ).stdout
            for run in runs
        )
    results = []
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            entry["impl"] = "layernorm"
            results.append(entry)
    return results


def main():
    args = parse_args()
    import torch

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"PyTorch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()})",
        file=sys.stderr,
    )
    ours, theirs = [], []
    for round_index in range(args.rounds):
        for results, measure in ((ours, crate_measurements), (theirs, torch_measurements)):
            entries = measure(args)
            for entry in entries:
                entry["round"] = round_index
            results.extend(entries)
    if args.json_out:
        with open(args.json_out, "w") as out:
            for entry in ours + theirs:
                out.write(json.dumps(entry) + "\n")
    key = lambda e: (e["op"], e["type"], e["rows"], e["cols"], e["threads"])  # noqa: E731
    # Per round: the crate's GB/s, and PyTorch's per form.
    crate = {key(e) + (e["round"],): e["gbps"] for e in ours if e["op"] in ("forward", "backward")}
    torch_gbps = {key(e) + (e["form"], e["round"]): e["gbps"] for e in theirs}
    rounds = range(args.rounds)
    print("GB/s: layernorm (`*_into`, reused buffers) / PyTorch `.out` (reused tensors) / "
          "PyTorch allocating (as autograd calls it); ratio = layernorm / the faster PyTorch form.")
    if args.rounds > 1:
        print(f"{args.rounds} alternating rounds: GB/s are medians over the rounds; the ratio is "
              "the median of the per-round ratios, with their lowest and highest.")
    print()
    print("| type | shape | threads | forward | ratio | backward | ratio |")
    print("|---|---|---|---|---|---|---|")
    rows = sorted({k[1:] for k in map(key, theirs)}, key=lambda k: (k[0], k[1] * k[2], k[3]))
    for type_name, r, c, threads in rows:
        cells = []
        for op in ("forward", "backward"):
            cell = (op, type_name, r, c, threads)
            out = [torch_gbps[cell + ("out", i)] for i in rounds]
            allocating = [torch_gbps[cell + ("allocating", i)] for i in rounds]
            mine = [crate.get(cell + (i,)) for i in rounds]
            torch_text = f"{statistics.median(out):.1f} / {statistics.median(allocating):.1f}"
            if None in mine:
                cells += [f"– / {torch_text}", "–"]
                continue
            ratios = [m / max(o, a) for m, o, a in zip(mine, out, allocating)]
            ratio_text = f"{statistics.median(ratios):.2f}×"
            if args.rounds > 1:
                ratio_text += f" ({min(ratios):.2f}–{max(ratios):.2f})"
            cells += [f"{statistics.median(mine):.1f} / {torch_text}", ratio_text]
        print(f"| {type_name} | {r}×{c} | {threads} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
