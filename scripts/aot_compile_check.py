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

import importlib
import json
import os
import sys


def _type_of(value) -> str:
    import torch

    if isinstance(value, torch.Tensor):
        return "*" + {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
                      torch.int32: "i32", torch.int64: "i64", torch.int8: "i8", torch.uint8: "u8",
                      torch.bool: "i1"}[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -2**31 <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    if value is None:
        return "constexpr"
    raise TypeError(f"unsupported argument {type(value)}")


def record(out_path: str, pytest_args: list[str]) -> int:
    os.environ["TRITON_INTERPRET"] = "1"
    import pytest
    from triton.runtime import interpreter

    seen: dict[str, dict] = {}
    original = interpreter.InterpretedFunction.run

    def run(self, *args, grid, warmup, **kwargs):
        names = self.arg_names
        values = dict(zip(names, args))
        launch = {k: v for k, v in kwargs.items() if k in ("num_warps", "num_stages")}
        values.update({k: v for k, v in kwargs.items() if k in names})
        import inspect

        params = inspect.signature(self.fn).parameters
        constexpr_names = [n for n, p in params.items() if "constexpr" in str(p.annotation)]
        entry = {
            "module": self.fn.__module__, "name": self.fn.__name__,
            "signature": {n: ("constexpr" if n in constexpr_names else _type_of(values[n])) for n in names},
            "constexprs": {n: values[n] for n in constexpr_names if n in values},
            "num_warps": launch.get("num_warps", 4), "num_stages": launch.get("num_stages", 3),
        }
        seen[json.dumps(entry, sort_keys=True)] = entry
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    interpreter.InterpretedFunction.run = run
    rc = pytest.main(pytest_args)
    with open(out_path, "w") as f:
        json.dump(list(seen.values()), f, indent=1)
    print(f"recorded {len(seen)} distinct launches -> {out_path}")
    return int(rc)


def compile_all(path: str) -> int:
    os.environ.pop("TRITON_INTERPRET", None)
    entries = json.load(open(path))
    # The GPU runs bf16 and fp16 inputs: every recorded launch is compiled with its input
    # tensors (Q, K, V and the compact copies) in bf16 and fp16, each distinct one once, bf16 first.
    inputs = {"Q", "K", "V", "K_SEL", "V_SEL"}
    variants: dict[str, dict] = {}
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
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(entry["module"]), entry["name"])
    src = ASTSource(fn, entry["signature"], constexprs=entry["constexprs"])
    dtypes = sorted({t for k, t in entry["signature"].items() if k in ("Q", "K")})
    label = f"{entry['name']} {'/'.join(dtypes)} w{entry['num_warps']} s{entry['num_stages']} " + \
        " ".join(f"{k}={v}" for k, v in entry["constexprs"].items())
    try:
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                options={"num_warps": entry["num_warps"], "num_stages": entry["num_stages"]})
    except Exception as exc:  # report every failure, then exit 1
        return f"FAIL  {label}: {type(exc).__name__}: {str(exc)[:2000]}"
    limit = 232448  # an H200 block's shared memory (227 KiB): a larger kernel fails at launch
    note = " OVER THE H200's SHARED MEMORY" if kernel.metadata.shared > limit else ""
    return f"{'FAIL' if note else 'ok  '}  {label}  (shared {kernel.metadata.shared} B{note})"


if __name__ == "__main__":
    mode, path = sys.argv[1], sys.argv[2]
    rest = sys.argv[4:] if len(sys.argv) > 3 and sys.argv[3] == "--" else sys.argv[3:]
    sys.exit(record(path, rest) if mode == "record" else compile_all(path))
