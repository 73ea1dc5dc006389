"""Compile every Triton kernel launch of a CPU test run for the H200 (sm_90), without a GPU.

The interpreter (TRITON_INTERPRET=1) checks what the kernels compute, not that Triton's CUDA
back end accepts them: a kernel can pass every CPU test and still fail to compile on the GPU,
where device time is short. This script closes that gap on the CPU:

    python scripts/aot_compile_check.py record OUT.json -- -q tests/test_sparse_kernel.py
    python scripts/aot_compile_check.py compile OUT.json

`record` runs pytest under the interpreter and writes each distinct launch (kernel, argument
types, constexpr values, num_warps, num_stages); `compile` builds each one with Triton's CUDA
back end for compute capability 9.0 (TTIR -> TTGIR -> LLVM -> PTX -> cubin with the bundled
ptxas) and prints one line per launch, with the shared memory it needs (over the H200's 227 KiB
per block counts as a failure). Exit status 1 if any compile fails. The local Triton
version may differ from the GPU machine's; a pass here is evidence, not proof.
"""

from __future__ import annotations

import json
import os
import sys


def record(out_path: str, pytest_args: list[str]) -> int:
    os.environ["TRITON_INTERPRET"] = "1"
    import pytest

    from sampleattn.bench.triton_keys import CacheKeyRecorder

    with CacheKeyRecorder() as recorder:
        rc = pytest.main(pytest_args)
    launches = list(recorder.launches.values())
    with open(out_path, "w") as f:
        json.dump(launches, f, indent=1)
    print(f"recorded {len(launches)} distinct launches -> {out_path}")
    return int(rc)


def compile_all(path: str) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    entries = json.load(open(path))
    # The GPU runs bf16 and fp16 inputs: every recorded launch is compiled with its input
    # tensors (Q, K, V, the compact copies and the pooled keys) in bf16 and fp16, each distinct one once, bf16 first.
    # Kernels that take no query tensor (the block selection reads fp32 scores) compile as recorded.
    inputs = {"Q", "K", "V", "K_SEL", "V_SEL", "KBAR"}
    variants: dict[str, dict] = {}
    for e in entries:
        if "Q" not in e["signature"]:
            variants.setdefault(json.dumps(e, sort_keys=True), e)
    for dtype in ("*bf16", "*fp16"):
        for e in entries:
            if e["signature"].get("Q") not in ("*fp16", "*fp32"):
                continue
            sig = {k: dtype if k in inputs and t.startswith("*") else t for k, t in e["signature"].items()}
            constexprs = dict(e["constexprs"])
            if "DOT_PRECISION" in constexprs:  # what the launchers pass for half inputs
                constexprs["DOT_PRECISION"] = "tf32"
            v = {**e, "signature": sig, "constexprs": constexprs}
            variants.setdefault(json.dumps(v, sort_keys=True), v)
    entries = list(variants.values())
    print(f"{len(entries)} launches to compile")
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(_compile_one, entries))
    for line in results:
        print(line)
    failed = sum(line.startswith("FAIL") for line in results)
    print(f"{len(results) - failed} compiled, {failed} failed")
    return 1 if failed else 0


def _compile_one(entry: dict) -> str:
    from sampleattn.bench.triton_keys import H200_SHARED_BYTES, compile_for_gpu

    dtypes = sorted({t for k, t in entry["signature"].items() if k in ("Q", "K")})
    label = f"{entry['name']} {'/'.join(dtypes)} w{entry['num_warps']} s{entry['num_stages']} " + \
        " ".join(f"{k}={v}" for k, v in entry["constexprs"].items())
    try:
        shared = compile_for_gpu(entry)
    except Exception as exc:  # report every failure, then exit 1
        return f"FAIL  {label}: {type(exc).__name__}: {str(exc)[:2000]}"
    note = " OVER THE H200's SHARED MEMORY" if shared > H200_SHARED_BYTES else ""
    return f"{'FAIL' if note else 'ok  '}  {label}  (shared {shared} B{note})"


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    rest = sys.argv[4:] if len(sys.argv) > 3 and sys.argv[3] == "--" else sys.argv[3:]
    sys.exit(record(path, rest) if mode == "record" else compile_all(path))
