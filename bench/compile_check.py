"""The operator under torch.compile and in a CUDA graph on a CUDA GPU: checks against eager, and
the time of eager calls against graph replay.

Run: ``python -m sampleattn.bench.compile_check --out DIR`` (about a minute on an H200). Writes
``DIR/compile_check.json`` (after every section) and prints a table last. Exit status 1 if a
check fails, 2 without a CUDA GPU.

1. ``torch.compile(fullgraph=True)`` (inductor) of a function calling the custom op
   ``torch.ops.sampleattn.sample_attention`` against eager `sample_attention`.
2. The whole operator (plan + stage 3) captured in a ``torch.cuda.CUDAGraph`` at fixed shapes
   after a warm-up call, replayed on new q/k/v copied into its static inputs, against eager
   on those values. Twice: with ``static_kmax=True``, and through the custom op with the width
   chosen automatically because the stream is capturing (after a ``static_kmax`` warm-up).
3. Median time (CUDA events) of eager (dynamic kmax: one host synchronisation), eager with
   ``static_kmax``, and graph replay, bf16: SmolLM2 geometry (9/3 heads, d64) at 8K and 16K,
   Llama-3-8B (32/8, d128) at 32K; alpha 0.95, window 0.08, sample 0.05, dense_below 0.

``--device cpu`` is a dry run of sections 1 (eager backend) with small fp32 inputs under
``TRITON_INTERPRET=1``; it skips the graph and the timing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

#: (name, nheads_q, nheads_kv, head_dim, seqlen) of the GPU cases.
GPU_CASES = [("smollm2", 9, 3, 64, 8192), ("smollm2", 9, 3, 64, 16384), ("llama3", 32, 8, 128, 32768)]
#: The CPU dry run: small enough for the interpreter.
CPU_CASES = [("small", 4, 2, 64, 256)]
#: Relative L2 error allowed against eager (the paths run the same deterministic kernels, so
#: the outputs are expected bitwise equal; the tolerance only keeps the check robust).
TOLERANCE = 1e-3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="folder for compile_check.json")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a dry run under TRITON_INTERPRET=1 (no graph, no timing)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per measurement (median)")
    parser.add_argument("--granularity", default="query_head", choices=["query_head", "kv_head"])
    parser.add_argument("--no-compile", action="store_true", help="skip section 1")
    return parser


def make_config(granularity: str):
    from sampleattn import SampleAttentionConfig

    return SampleAttentionConfig(alpha=0.95, window_ratio=0.08, sample_ratio=0.05, dense_below=0,
                                 gqa_granularity=granularity)


def make_inputs(case, dtype, device, seed):
    from sampleattn.synthetic import structured_qkv

    _, hq, hkv, d, seqlen = case
    return structured_qkv(1, seqlen, seqlen, hq, hkv, d, dtype=dtype, device=device, seed=seed)


def case_name(case) -> str:
    name, hq, hkv, d, seqlen = case
    return f"{name} {hq}/{hkv} d{d} {seqlen // 1024}K" if seqlen >= 1024 else f"{name} {hq}/{hkv} d{d} {seqlen}"


def compare(out, ref) -> dict:
    from sampleattn.reference import relative_error

    err = relative_error(out, ref)
    return {"rel_error": err, "bitwise_equal": bool(torch_equal(out, ref)), "ok": err <= TOLERANCE}


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))


#: How the compiled function reaches the op: a JSON string made outside the compiled region
#: (`op_arguments`), `SampleAttention(as_custom_op=True)` (what a model holds), or the config
#: object itself (its JSON is made while tracing; needs a torch whose Dynamo can run
#: `assume_constant_result` on a pydantic object: 2.13 can, 2.11 cannot).
COMPILE_FORMS = ("json", "module", "config")


def check_compile(case, config, dtype, device, backend, form: str = "json") -> dict:
    """Section 1: torch.compile(fullgraph=True) of the custom op against eager."""
    import torch

    from sampleattn import SampleAttention, sample_attention
    from sampleattn.ops import op_arguments, sample_attention_op

    q, k, v = make_inputs(case, dtype, device, seed=0)
    if form == "json":
        config_json = op_arguments(config)[0]

        def attention(q, k, v):
            return sample_attention_op(q, k, v, config_json)
    elif form == "module":
        operator = SampleAttention(config, as_custom_op=True)

        def attention(q, k, v):
            return operator(q, k, v, layer=0)
    else:
        def attention(q, k, v):
            return sample_attention_op(q, k, v, config)

    torch._dynamo.reset()
    started = time.perf_counter()
    compiled = torch.compile(attention, fullgraph=True, dynamic=False, backend=backend)
    out = compiled(q, k, v)
    seconds = time.perf_counter() - started
    ref = sample_attention(q, k, v, config)
    return {"check": f"compile[{backend}, {form}] {case_name(case)}", "compile_s": seconds, **compare(out, ref)}


def capture(fn, warmup):
    """Warm up on a side stream (PyTorch's recipe), then capture ``fn()``: (graph, static output)."""
    import torch

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            warmup()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    torch.cuda.synchronize()
    return graph, out


def check_graph(case, config, dtype, repeat: int, results: list, failures: list) -> None:
    """Sections 2 and 3 for one case."""
    import torch

    from sampleattn import plan, sample_attention
    from sampleattn.ops import sample_attention_op
    from sampleattn.timing import cuda_ms

    name = case_name(case)
    q, k, v = make_inputs(case, dtype, "cuda", seed=0)
    sq, sk, sv = q.clone(), k.clone(), v.clone()  # the graph's static inputs

    def static_call():
        return sample_attention(sq, sk, sv, config, static_kmax=True)

    def op_call():  # no flag: the op sees the capturing stream and takes the static width
        return sample_attention_op(sq, sk, sv, config)

    def op_warmup():
        return sample_attention_op(sq, sk, sv, config, static_kmax=True)

    ref1 = sample_attention(q, k, v, config)  # eager, dynamic kmax
    q2, k2, v2 = make_inputs(case, dtype, "cuda", seed=1)
    ref2 = sample_attention(q2, k2, v2, config)
    timings = None
    for label, fn, warmup in (("static_kmax", static_call, static_call), ("custom op, auto", op_call, op_warmup)):
        check = f"graph[{label}] {name}"
        sq.copy_(q), sk.copy_(k), sv.copy_(v)
        try:
            graph, out = capture(fn, warmup)
            graph.replay()  # on the values it was captured with
            torch.cuda.synchronize()
            first = compare(out, ref1)
            sq.copy_(q2), sk.copy_(k2), sv.copy_(v2)
            graph.replay()  # on new values
            torch.cuda.synchronize()
        except Exception as error:  # noqa: BLE001 - the report says what failed
            results.append({"check": check, "ok": False, "error": f"{type(error).__name__}: {error}"[:500]})
            failures.append(check)
            continue
        row = {"check": check, **compare(out, ref2), "first_inputs": first}
        row["ok"] = row["ok"] and first["ok"]
        results.append(row)
        if not row["ok"]:
            failures.append(check)
        if label == "static_kmax" and row["ok"]:
            dynamic = plan(q2, k2, config)
            timings = {
                "case": name, "seqlen": case[4], "kmax_dynamic": int(dynamic.col_idx.shape[-1]),
                "density": dynamic.mean_density,
                "eager_ms": cuda_ms(lambda: sample_attention(q2, k2, v2, config), warmup=2, repeat=repeat),
                "eager_static_ms": cuda_ms(static_call, warmup=2, repeat=repeat),
                "replay_ms": cuda_ms(graph.replay, warmup=2, repeat=repeat),
            }
            timings["speedup"] = timings["eager_ms"] / timings["replay_ms"]
        del graph, out
        torch.cuda.empty_cache()
    if timings is not None:
        results.append({"timing": timings})


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cpu":
        # Before anything imports sampleattn.kernels (it decides interpreted or compiled then).
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from sampleattn import collect_env

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU: this check runs on a GPU (or pass --device cpu for a dry run)", file=sys.stderr)
        return 2
    config = make_config(args.granularity)
    cases = GPU_CASES if args.device == "cuda" else CPU_CASES
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    compile_backend = "inductor" if args.device == "cuda" else "eager"
    results: list[dict] = []
    failures: list[str] = []
    started = time.time()
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every section, so a run stopped early still leaves its results
        report = {"env": collect_env(), "device": args.device, "config": config.model_dump(),
                  "results": results, "failures": failures, "seconds": time.time() - started}
        (out_dir / "compile_check.json").write_text(json.dumps(report, indent=1))

    if not args.no_compile:
        for case in cases:
            for form in COMPILE_FORMS:
                try:
                    row = check_compile(case, config, dtype, args.device, compile_backend, form)
                except Exception as error:  # noqa: BLE001
                    row = {"check": f"compile[{compile_backend}, {form}] {case_name(case)}", "ok": False,
                           "error": f"{type(error).__name__}: {error}"[:500]}
                results.append(row)
                if not row["ok"]:
                    if form == "config" and torch.__version__ < "2.13":
                        row["known_limitation"] = "config objects need torch >= 2.13 under torch.compile"
                    else:
                        failures.append(row["check"])
                save()
    if args.device == "cuda":
        for case in cases:
            check_graph(case, config, dtype, args.repeat, results, failures)
            save()
    print_table(results)
    print(f"{sum('check' in r for r in results)} checks, {len(failures)} failed: {failures}; "
          f"{time.time() - started:.0f} s; {out_dir / 'compile_check.json'}")
    return 1 if failures else 0


def print_table(results: list[dict]) -> None:
    print(f"{'check':<40} {'ok':>5} {'rel_error':>10} {'bitwise':>8}")
    for r in results:
        if "check" in r:
            err = r.get("rel_error")
            print(f"{r['check']:<40} {str(r['ok']):>5} {'' if err is None else f'{err:.2e}':>10} "
                  f"{str(r.get('bitwise_equal', '')):>8} {r.get('error', '')}")
    rows = [r["timing"] for r in results if "timing" in r]
    if rows:
        print(f"\n{'case':<22} {'kmax':>6} {'density':>8} {'eager ms':>9} {'static ms':>10} {'replay ms':>10} {'speedup':>8}")
        for t in rows:
            print(f"{t['case']:<22} {t['kmax_dynamic']:>6} {t['density']:>8.4f} {t['eager_ms']:>9.3f} "
                  f"{t['eager_static_ms']:>10.3f} {t['replay_ms']:>10.3f} {t['speedup']:>8.2f}")


if __name__ == "__main__":
    sys.exit(main())
