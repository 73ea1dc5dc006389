"""Methods against dense cuDNN on the same tensors and the same seeded error rows: the runner that
`rules_bench` (selection rules) and `peers_bench` (MInference, FlexPrefill, the operator) share.

A method is a `Method` (or a plain ``(name, callable)`` pair). `measure` checks, then times, one
method on one input; `compare` does that for every method on every input band, with the dense
reference timed once per length, and hands each row to the caller as soon as it is measured.

Row fields: ``method``, ``params``, ``first_call_s`` (Triton compiles included), ``error``
(relative L2 against exact fp32 attention on the rows), ``nan``, ``density`` and the method's
other scalar reports, and where the method splits into a plan and a kernel: ``error_vs_own_plan``
(its output against exact attention under its own selection on the same rows), ``check_ok``,
``plan_ms``, ``attention_ms``; always ``total_ms``, ``cudnn_ms``, ``speedup_vs_cudnn`` and, with a
plan, ``plan_share``. Times: CUDA-event medians on a GPU, wall clock on the CPU (dry runs).
"""

from __future__ import annotations

import dataclasses
import functools
import time
import traceback
from typing import Any, Callable

import torch

__all__ = ["Method", "as_method", "compare", "measure", "operator_method", "peer_method", "peer_methods"]

#: Error of a method's output against exact attention under its own selection above which its
#: kernel is wrong (not its selection).
OWN_PLAN_TOLERANCE = 2e-2


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of a comparison.

    Attributes:
        name: the row's label.
        run: ``(q, k, v) -> out or (out, info)``: the first, checked call; ``info`` may carry
            ``density`` and any other scalar worth recording.
        timed: what is timed as the whole method (default ``run``), e.g. ``run`` without its reports.
        plan: ``(q, k) -> plan``, the estimate alone (``plan_ms``); with ``attend``
            ``(q, k, v, plan) -> out``, the kernel alone (``attention_ms``).
        oracle_rows: ``(q, k, v, rows, plan) -> out rows`` (B, len(rows), Hq, D): exact attention
            under the plan's own selection, for ``error_vs_own_plan``.
        params: the method's parameters, recorded with each row.
    """

    name: str
    run: Callable[..., Any]
    timed: Callable[..., Any] | None = None
    plan: Callable[..., Any] | None = None
    attend: Callable[..., Any] | None = None
    oracle_rows: Callable[..., Any] | None = None
    params: dict = dataclasses.field(default_factory=dict)


def as_method(entry: Method | tuple[str, Callable]) -> Method:
    """A `Method`, or a ``(name, callable)`` pair made into one."""
    if isinstance(entry, Method):
        return entry
    name, fn = entry
    return Method(name=name, run=fn)


def operator_method(name: str, config) -> Method:
    """The operator with one `SampleAttentionConfig`: plan (the first call with its reports, timed
    without them) then the kernel; ``info`` holds the plan's reports and the config."""
    from sampleattn import plan, sample_attention, sparse_attention
    from sampleattn.reference import attention_rows_ref

    def first(q, k, v):
        p = plan(q, k, config)
        info = {"density": p.mean_density, "retained_mean": float(p.retained_mean.mean()),
                "retained_min": float(p.retained_min.min()), "estimate_cost": p.estimate_cost,
                "columns_mean": float(p.n_selected.float().mean())}
        if p.blocks is not None:
            info["key_blocks_mean"] = float(p.blocks.blk_count.float().mean())
        return sparse_attention(q, k, v, p), info

    return Method(name=name, run=first, timed=lambda q, k, v: sample_attention(q, k, v, config),
                  plan=lambda q, k: plan(q, k, config, reports=False),
                  attend=lambda q, k, v, p: sparse_attention(q, k, v, p),
                  oracle_rows=lambda q, k, v, rows, p: attention_rows_ref(q, k, v, rows, plan=p),
                  params=config.model_dump(mode="json"))


def _peer_oracle(q, k, v, rows, p):
    from sampleattn.bench.peers.reference import masked_attention_rows

    return masked_attention_rows(q, k, v, rows, p.mask_rows)


def peer_method(peer: str, preset: str, name: str | None = None) -> Method:
    """A peer of `sampleattn.bench.peers` (``"vertical_slash"`` or ``"flexprefill"``) at a preset."""
    from sampleattn.bench import peers
    from sampleattn.bench.peers.flexprefill import flexprefill_params
    from sampleattn.bench.peers.vertical_slash import vertical_slash_params

    if peer not in ("vertical_slash", "flexprefill"):
        raise ValueError(f"peer={peer!r}; choose 'vertical_slash' or 'flexprefill'")
    attention = getattr(peers, f"{peer}_attention")
    params = vertical_slash_params(preset) if peer == "vertical_slash" else flexprefill_params(preset)
    label = "minference vertical-slash" if peer == "vertical_slash" else "flexprefill"
    return Method(name=name or f"{label} {preset}", run=functools.partial(attention, preset=preset),
                  timed=functools.partial(attention, preset=preset, with_density=False),
                  plan=functools.partial(getattr(peers, f"{peer}_plan"), preset=preset),
                  attend=getattr(peers, f"{peer}_sparse"), oracle_rows=_peer_oracle, params=params)


def peer_methods() -> list[Method]:
    """MInference's vertical-slash at each of its presets, then FlexPrefill at each of its."""
    from sampleattn.bench.peers import flexprefill, vertical_slash

    return ([peer_method("vertical_slash", p) for p in vertical_slash.PRESETS]
            + [peer_method("flexprefill", p) for p in flexprefill.PRESETS])


def _split(result) -> tuple[Any, dict]:
    return (result[0], dict(result[1])) if isinstance(result, tuple) else (result, {})


def measure(method: Method, q, k, v, *, rows, exact, cudnn_ms: float | None, repeat: int, warmup: int) -> dict:
    """Check, then time, one method on q (B, S, Hq, D), k/v (B, S, Hkv, D); ``exact`` is exact
    attention of ``rows`` (B, len(rows), Hq, D). Returns one row (the module docstring)."""
    from sampleattn.reference import relative_error
    from sampleattn.timing import device_ms

    device = q.device
    row: dict = {"method": method.name, "params": method.params}
    started = time.perf_counter()
    out, info = _split(method.run(q, k, v))
    if device.type == "cuda":
        torch.cuda.synchronize()
    row["first_call_s"] = time.perf_counter() - started
    row["error"] = relative_error(out[:, rows], exact)
    row["nan"] = bool(torch.isnan(out).any())
    row["density"] = info.pop("density", None)
    row.update({key: val for key, val in info.items()
                if key not in method.params and isinstance(val, (bool, int, float, str))})
    del out
    timer = dict(warmup=warmup, repeat=repeat)
    if method.plan is not None:
        p = method.plan(q, k)
        if method.attend is not None and method.oracle_rows is not None:
            mine = method.attend(q, k, v, p)[:, rows]
            row["error_vs_own_plan"] = relative_error(mine, method.oracle_rows(q, k, v, rows, p))
            row["check_ok"] = bool(row["error_vs_own_plan"] < OWN_PLAN_TOLERANCE and not row["nan"])
            del mine
        row["plan_ms"] = device_ms(lambda: method.plan(q, k), device, **timer)
        if method.attend is not None:
            row["attention_ms"] = device_ms(lambda: method.attend(q, k, v, p), device, **timer)
        del p
    timed = method.timed or method.run
    row["total_ms"] = device_ms(lambda: timed(q, k, v), device, **timer)
    row["cudnn_ms"] = cudnn_ms
    row["speedup_vs_cudnn"] = cudnn_ms / row["total_ms"] if cudnn_ms else None
    if "plan_ms" in row:
        row["plan_share"] = row["plan_ms"] / row["total_ms"]
    return row


def compare(methods: list[Method], inputs: dict[str, tuple | Callable[[], tuple]], *, seqlen: int, error_rows: int, repeat: int,
            warmup: int, emit: Callable[[dict], None], bar=None, strict: bool = False) -> list[dict]:
    """Every method on every band of ``inputs`` (``{band: (q, k, v)}`` at ``seqlen``, or a function
    that makes them, so that one band at a time is held), after SDPA
    cuDNN timed once on the first band (dense time does not depend on the values; its row is
    emitted for each band). ``emit(row)`` gets each row as it is measured (``band`` and
    ``seqlen`` added); a failing method gives a row with ``failed`` (and stops the run with
    ``strict``). Returns the failures as ``{method, band, seqlen, error, traceback}``."""
    from sampleattn.bench import harness
    from sampleattn.reference import attention_rows_ref

    failures: list[dict] = []
    cudnn: dict | None = None
    for band, qkv in inputs.items():
        q, k, v = qkv() if callable(qkv) else qkv
        if cudnn is None:
            cudnn = harness.dense_baselines(q, k, v, repeat=repeat, warmup=warmup, flex=False, backends=("cudnn",))
        emit({"method": "sdpa cudnn", "band": band, "seqlen": seqlen, "total_ms": cudnn["cudnn"],
              "speedup_vs_cudnn": 1.0, "density": 1.0, **{key: val for key, val in cudnn.items() if key != "cudnn"}})
        rows = harness.error_rows_for(seqlen, min(error_rows, seqlen)).to(q.device)
        exact = attention_rows_ref(q, k, v, rows)
        for method in methods:
            if bar is not None:
                bar.set_postfix_str(f"{method.name} {band} {seqlen}")
            try:
                row = measure(method, q, k, v, rows=rows, exact=exact, cudnn_ms=cudnn.get("cudnn"), repeat=repeat,
                              warmup=warmup)
            except Exception as error:  # noqa: BLE001 - one method's failure must not lose the others' rows
                text = f"{type(error).__name__}: {str(error)[:300]}"
                failures.append({"method": method.name, "band": band, "seqlen": seqlen, "error": text,
                                 "traceback": traceback.format_exc()[-2000:]})
                row = {"method": method.name, "failed": text}
                if strict:
                    raise
            finally:
                if bar is not None:
                    bar.update()
                if q.device.type == "cuda":
                    torch.cuda.empty_cache()
            row.update(band=band, seqlen=seqlen, error_rows=len(rows))
            if "substitute" in cudnn:
                row["substitute"] = cudnn["substitute"]
            emit(row)
        del q, k, v, exact
    return failures
