"""Build the panel kernels for one target in a fresh process and report on them as JSON (run by test_kernels.py).

``python panel_target.py [--aarch64] [--run SHAPES_JSON]``: the target is the one numba's environment names
(``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES``), or with ``--aarch64`` an AArch64 triple: the kernels' LLVM IR, built
with the tile :mod:`numbarnn._isa` chooses for that triple, is then compiled through llvmlite for it (never run);
numba builds that IR unoptimised (the caller sets ``NUMBA_OPT=0``) and LLVM optimises it for AArch64.
The caller sets ``NUMBA_CACHE_DIR`` to a fresh directory, so code built for another target never reaches the
project's cache. ``--run`` also runs the product on the (M, K, N) shapes given and reports, per shape and dtype,
the largest error divided by the classical bound K * eps * (|A| @ |B|) (at most 1 when correct). The report also
counts each micro-kernel's instructions, and its stack accesses inside its multiply-add loops (0 when everything
stays in registers).
"""

import argparse
import importlib.util
import itertools
import json
import pathlib
import re
import sys

import llvmlite.binding as ll
import numpy as np


def _load_isa():
    """numbarnn._isa alone, registered under its name before the package is imported: ``import numbarnn`` imports
    numbarnn._panels, which reads the tile once, so an override of ``_isa.target`` must precede the package's
    import (made after it, the AArch64 build compiled the host's tile while ``_isa.tile()`` said NEON)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "numbarnn" / "_isa.py"
    spec = importlib.util.spec_from_file_location("numbarnn._isa", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_isa = _load_isa()

AARCH64 = _isa.Target("aarch64-unknown-linux-gnu", "generic", "")
# a call of libm's fma / fmaf: what llvm.fma on a vector becomes on a target without FMA
LIBM_FMA = re.compile(r"\bfmaf?\b")


# x86 (AT&T) and AArch64 assembly: a function's label, a branch and its target, a multiply(-add), a stack access
FUNCTION_LABEL = re.compile(r"^(numbarnn_panel_tile_\w+):", re.MULTILINE)
BRANCH = re.compile(r"^\s+(?:j[a-z]+|b(?:\.[a-z]+)?|cb n?z|tbn?z)\s+(?:[^,]*,\s*)*(\.L\w+)\s*$")
MULTIPLY = re.compile(r"\b(?:vfmadd\w*|fmla|v?mulp[sd]|fmul)\b")
STACK = re.compile(r"\((?:%rsp|%rbp)\)|\[(?:sp|x29)\b")


def tile_functions(assembly):
    """``{tile function: its assembly}`` for each micro-kernel in ``assembly``."""
    functions = list(FUNCTION_LABEL.finditer(assembly))
    bodies = {}
    for match, following in itertools.pairwise([*functions, None]):
        body = assembly[match.end() : following.start() if following else len(assembly)]
        bodies[match.group(1)] = body[: body.find(".Lfunc_end")] if ".Lfunc_end" in body else body
    return bodies


def tile_instructions(assembly):
    """``{tile function: instructions}`` (the lines that are not labels, directives or comments)."""
    return {
        name: sum(
            1 for line in map(str.strip, body.splitlines()) if line and not line.endswith(":") and line[0] not in ".#/"
        )
        for name, body in tile_functions(assembly).items()
    }


def tile_loop_stack_accesses(assembly):
    """``{tile function: stack accesses}`` in each micro-kernel's multiply-add loops (the loops, found as backward
    branches, that hold a vector multiply): 0 when the tile's accumulators, panel vectors and pointers all stay in
    registers."""
    counts = {}
    for name, body in tile_functions(assembly).items():
        lines = body.splitlines()
        labels = {line.strip()[:-1]: n for n, line in enumerate(lines) if re.match(r"^\.L\w+:", line)}
        accesses = 0
        for n, line in enumerate(lines):
            branch = BRANCH.match(line)
            if branch and labels.get(branch.group(1), n) < n:
                loop = lines[labels[branch.group(1)] : n + 1]
                if any(MULTIPLY.search(instruction) for instruction in loop):
                    accesses += sum(bool(STACK.search(instruction)) for instruction in loop)
        counts[name] = accesses
    return counts


def aarch64_assembly(llvm_ir):
    ll.initialize_all_targets()
    ll.initialize_all_asmprinters()
    machine = ll.Target.from_triple(AARCH64.triple).create_target_machine(cpu=AARCH64.cpu_name, opt=3)
    module = ll.parse_assembly(llvm_ir)
    module.triple = AARCH64.triple
    module.data_layout = str(machine.target_data)
    module.verify()
    # the caller built the IR with NUMBA_OPT=0: numba's optimised IR already holds x86 lowerings of its atomics
    tuning = ll.create_pipeline_tuning_options(speed_level=3)
    builder = ll.create_pass_builder(machine, tuning)
    builder.getModulePassManager().run(module, builder)
    return machine.emit_assembly(module)


def worst_errors(panels_module, shapes):
    rng = np.random.default_rng(0)
    worst = {}
    for dtype in (np.float32, np.float64):
        for (m, k, n), layout in itertools.product(shapes, ("b", "w.T")):
            a = rng.standard_normal((m, k)).astype(dtype)
            # b packed as it is (the backward's W_hh), or w.T, packed in transposed blocks (the forward's W_hh.T)
            b = rng.standard_normal((k, n) if layout == "b" else (n, k)).astype(dtype)
            b = b if layout == "b" else b.T
            panels = np.empty(panels_module.panel_shape(k, n, dtype), dtype)
            panels_module.pack_panels(b, panels)
            out = np.full((m, n), np.nan, dtype)
            panels_module.panel_matmul(a, panels, out)
            exact = a.astype(np.float64) @ b.astype(np.float64)
            bound = k * np.finfo(dtype).eps * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)))
            error = np.abs(out - exact)
            ratio = np.where(bound > 0, error / np.where(bound > 0, bound, 1), np.where(error > 0, np.inf, 0))
            name = f"{np.dtype(dtype).name} {m}x{k}x{n} {layout}"
            worst[name] = float(np.nan_to_num(ratio, nan=np.inf).max(initial=0))
    return worst


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--aarch64", action="store_true")
    parser.add_argument("--run", type=json.loads, default=None)
    args = parser.parse_args()
    if args.aarch64:
        _isa.target = lambda: AARCH64  # before numbarnn._panels reads it
    from numba.core.registry import cpu_target

    from numbarnn import _panels

    target = _isa.target()
    assert sys.modules["numbarnn._isa"] is _isa  # the package uses the module whose target was set above
    report = {
        "tile": vars(_panels._TILE),
        "target": vars(target),
        "matches_numba": (target.triple, target.cpu_name, target.features)
        == cpu_target.target_context.codegen().magic_tuple(),
    }
    assembly = {}
    for dtype, product in itertools.product(
        ("float32", "float64"), (_panels.panel_matmul, _panels.panel_matmul_transposed)
    ):
        signature = f"({dtype}[:, ::1], {dtype}[:, :, ::1], {dtype}[:, ::1])"
        product.compile(signature)
        (compiled,) = [sig for sig in product.signatures if str(sig[0].dtype) == dtype]
        key = f"{dtype} {product.__name__}"
        if args.aarch64:
            assembly[key] = aarch64_assembly(product.inspect_llvm(compiled))
        else:
            assembly[key] = product.inspect_asm(compiled)
    text = "\n".join(assembly.values())
    report["libm_fma_calls"] = LIBM_FMA.findall(text)
    report["tile_loop_stack_accesses"] = tile_loop_stack_accesses(text)
    report["tile_instructions"] = tile_instructions(text)
    report["instructions"] = {
        name: name in text
        for name in ("zmm", "ymm", "xmm", "vfmadd", "mulps", "addps", "fmla", "fmul", "fadd", "movntps")
    }
    if args.run is not None:
        report["worst_error_over_bound"] = worst_errors(_panels, args.run)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
