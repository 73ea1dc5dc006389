"""Which Triton compile-cache entries a run of the kernels would create on a CUDA GPU, counted on
the CPU.

Under ``TRITON_INTERPRET=1`` nothing is compiled, but Triton's own binder for the CUDA back end
(sm_90) can still say, for every launch, which cache key the launch would look up: the argument
types, the divisibility-by-16 (and ``== 1``) specialisation of every integer and pointer, the
constexpr values and the launch options. Two launches with the same key reuse one compiled
kernel; a new key is a compile. This is how "no recompilation for each new length" is checked
without a GPU (``tests/test_no_recompile.py``): the lengths are runtime arguments, so a new
length adds a key only when it moves an integer into another divisibility class.

Usage::

    with CacheKeyRecorder() as keys:
        sample_attention(q, k, v, config)
    keys.count_by_kernel()   # {"sparse_attention_fwd_kernel": 2, ...}

The binder is Triton's internal API (``triton.runtime.jit.create_function_from_signature``); a
Triton that lacks it raises ``RuntimeError`` on entry.
"""

from __future__ import annotations

import collections
import inspect
import os


class CacheKeyRecorder:
    """Context manager: records the sm_90 compile-cache key of every interpreted kernel launch."""

    def __init__(self, capability: int = 90) -> None:
        self.capability = capability
        self.keys: set[tuple[str, str]] = set()
        #: (kernel, cache key) -> {argument name: its specialisation}, to say what differs
        self.specializations: dict[tuple[str, str], dict[str, str]] = {}
        #: (kernel, cache key) -> what `compile_for_gpu` needs to build that variant
        self.launches: dict[tuple[str, str], dict] = {}
        self._binders: dict = {}
        self._original = None

    def __enter__(self) -> "CacheKeyRecorder":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("CacheKeyRecorder needs TRITON_INTERPRET=1 (set before sampleattn.kernels is imported)")
        try:
            from triton.backends.compiler import GPUTarget
            from triton.compiler import make_backend
            from triton.runtime import interpreter, jit

            backend = make_backend(GPUTarget("cuda", self.capability, 32))
            jit.create_function_from_signature, jit.compute_cache_key  # noqa: B018 (presence check)
        except (ImportError, AttributeError) as error:
            raise RuntimeError(f"this Triton has no binder to record cache keys with: {error}") from error
        recorder = self
        original = interpreter.InterpretedFunction.run

        def run(self, *args, grid, warmup, **kwargs):
            binder = recorder._binders.get(self.fn)
            if binder is None:
                # The kernel's own `do_not_specialize` lists, as @triton.jit passed them on.
                options = {k: v for k, v in getattr(self, "kwargs", {}).items()
                           if k in ("do_not_specialize", "do_not_specialize_on_alignment")}
                compiled = jit.JITFunction(self.fn, **options)
                binder = jit.create_function_from_signature(compiled.signature, compiled.params, backend)
                recorder._binders[self.fn] = binder
            _, specialization, options = binder(*args, **kwargs)
            key = (self.fn.__name__, jit.compute_cache_key({}, specialization, options))
            if key not in recorder.keys:
                names = [p.name for p in inspect.signature(self.fn).parameters.values()]
                recorder.specializations[key] = {n: str(s[1]) for n, s in zip(names, specialization)}
                values = dict(zip(names, args)) | {k: v for k, v in kwargs.items() if k in names}
                recorder.launches[key] = {
                    "module": self.fn.__module__, "name": self.fn.__name__, "signature": {n: s[0] for n, s in zip(names, specialization)},
                    "constexprs": {n: values[n] for n, s in zip(names, specialization) if s[0] == "constexpr"},
                    "num_warps": kwargs.get("num_warps", 4), "num_stages": kwargs.get("num_stages", 3)}
            recorder.keys.add(key)
            return original(self, *args, grid=grid, warmup=warmup, **kwargs)

        self._original, self._interpreter = original, interpreter
        interpreter.InterpretedFunction.run = run
        return self

    def __exit__(self, *exc) -> None:
        self._interpreter.InterpretedFunction.run = self._original

    def differing_arguments(self) -> dict[str, dict[str, list[str]]]:
        """Per kernel with several keys: the arguments whose specialisation differs between them."""
        by_kernel: dict[str, list[dict[str, str]]] = collections.defaultdict(list)
        for (name, _), spec in self.specializations.items():
            by_kernel[name].append(spec)
        return {name: {arg: [s[arg] for s in specs] for arg in specs[0] if len({s[arg] for s in specs}) > 1}
                for name, specs in by_kernel.items() if len(specs) > 1}

    def count_by_kernel(self) -> dict[str, int]:
        """Distinct cache keys (compiled variants on a GPU) per kernel function."""
        return dict(collections.Counter(name for name, _ in self.keys))


#: Shared memory one thread block may use on the H200 (227 KiB): a kernel that needs more fails
#: at launch with "out of resource: shared memory".
H200_SHARED_BYTES = 232_448


def compile_for_gpu(launch: dict, capability: int = 90) -> int:
    """Compile one recorded launch (`CacheKeyRecorder.launches`) with Triton's CUDA back end for
    ``capability`` (no GPU needed: Triton's bundled ptxas) and return the shared memory, in bytes,
    that one block of it needs. Integers are compiled without divisibility hints. Under the
    interpreter the kernels' helper functions are not compilable objects, so the compile then
    runs in a fresh Python process without ``TRITON_INTERPRET``."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        import json
        import subprocess
        import sys

        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        done = subprocess.run([sys.executable, "-m", "sampleattn.bench.triton_keys", str(capability)],
                              input=json.dumps(launch), capture_output=True, text=True, env=env, check=False)
        if done.returncode:
            raise RuntimeError(f"compiling {launch['name']} for sm_{capability} failed:\n{done.stderr[-3000:]}")
        return int(done.stdout.strip().splitlines()[-1])
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(launch["module"]), launch["name"])
    kernel = triton.compile(ASTSource(fn, launch["signature"], constexprs=launch["constexprs"]),
                            target=GPUTarget("cuda", capability, 32),
                            options={"num_warps": launch["num_warps"], "num_stages": launch["num_stages"]})
    return int(kernel.metadata.shared)


if __name__ == "__main__":  # the compile of `compile_for_gpu`: a launch as JSON on stdin
    import json
    import sys

    print(compile_for_gpu(json.load(sys.stdin), int(sys.argv[1]) if len(sys.argv) > 1 else 90))
