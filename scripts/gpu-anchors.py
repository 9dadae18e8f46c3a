#!/usr/bin/env python3
"""Anchors for hexec's GPU figures, measured in the same run on the same machine with PyTorch.

- cuBLAS SGEMM with TF32 off (plain f32 arithmetic, as hexec's WGSL GEMM does) at the sizes of
  `hexec bench gpu`, timed with CUDA events (median of --reps after warm-up);
- cuSOLVER's Cholesky (torch.linalg.cholesky on the GPU) at the demo's size, f32;
- the CPU Cholesky PyTorch links (MKL or OpenBLAS) on every core, f32 and f64.

Prints one Markdown table. Needs only torch (the GPU machine's image has it); exits 0 with a
line saying so when torch or a CUDA device is missing, so that the device check goes on.
"""

import argparse
import statistics
import sys
import time


def median_ms_cuda(torch, fn, reps):
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def median_s_cpu(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def spd(torch, n, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(n)
    a = torch.rand(n, n, generator=g, dtype=torch.float64) - 0.5
    a = a @ a.T / n + torch.eye(n, dtype=torch.float64)
    return a.to(dtype=dtype, device=device)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--gemm-sizes", default="256,512,1024,2048,4096,8192")
    p.add_argument("--chol-gpu", default="14336")
    p.add_argument("--chol-cpu", default="4096,8192")
    a = p.parse_args()
    try:
        import torch
    except ImportError:
        print("gpu-anchors: no torch here, no anchors")
        return 0
    rows = []
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        name = torch.cuda.get_device_name(0)
        for n in map(int, a.gemm_sizes.split(",")):
            x = torch.rand(n, n, device="cuda") - 0.5
            y = torch.rand(n, n, device="cuda") - 0.5
            ms = median_ms_cuda(torch, lambda: torch.mm(x, y), a.reps)
            rows.append((f"cuBLAS SGEMM f32, TF32 off ({name})", n, f"{2 * n**3 / ms / 1e6:.0f} GFLOP/s"))
        for n in map(int, a.chol_gpu.split(",")):
            m = spd(torch, n, torch.float32, "cuda")
            ms = median_ms_cuda(torch, lambda: torch.linalg.cholesky(m), a.reps)
            rows.append((f"cuSOLVER Cholesky f32 ({name})", n, f"{ms / 1e3:.4f} s, {n**3 / 3 / ms / 1e6:.0f} GFLOP/s"))
    else:
        print("gpu-anchors: torch sees no CUDA device")
    threads = torch.get_num_threads()
    for dtype in (torch.float32, torch.float64):
        for n in map(int, a.chol_cpu.split(",")):
            m = spd(torch, n, dtype, "cpu")
            s = median_s_cpu(lambda: torch.linalg.cholesky(m), max(3, a.reps // 3))
            rows.append((f"torch CPU Cholesky {str(dtype)[6:]} ({threads} threads)", n, f"{s:.4f} s, {n**3 / 3 / s / 1e9:.0f} GFLOP/s"))
    print("| anchor | size | value |")
    print("|---|---:|---:|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
