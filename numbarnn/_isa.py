"""What this process compiles for and runs on: the instruction set numba targets, the panel kernels' register tile for
it, and the host's cache sizes. The one owner of these choices (:mod:`numbarnn._panels` and ``bench --kernels`` ask
here).

The target is the one numba's code generator uses, resolved by the same rules (``numba.core.codegen.CPUCodegen``):
``NUMBA_CPU_NAME`` / ``NUMBA_CPU_FEATURES`` (``numba.core.config.CPU_NAME`` / ``CPU_FEATURES``; ``generic`` implies
no features), else the host's name and features from llvmlite (with every ``avx*`` feature off when
``NUMBA_ENABLE_AVX=0``), for the process's triple. Which vector registers that target has is asked of LLVM itself: a
probe function is compiled for that very (triple, CPU, features) and its assembly read, so a CPU name whose defaults
a feature string overrides (``NUMBA_CPU_NAME=skylake-avx512`` on a host without AVX-512) gets what LLVM will emit.

numba's on-disk cache keys each compiled function on (triple, CPU name, features): ``CPUCodegen.magic_tuple()``.
The tile is a pure function of exactly those three (nothing else is read), so code loaded from the cache always uses
the tile that :func:`tile` reports in the loading process, and buffers sized with :func:`tile` fit it.

Cache sizes are not in numba's key: they only choose the panel product's block sizes, which change its speed but
never its results (:mod:`numbarnn._panels`).
"""

import functools
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The register tile per instruction set: rows of A multiplied at once by a panel of VECTORS_PER_PANEL vectors. Each
# row holds VECTORS_PER_PANEL accumulators, and the loop also needs the panel's vectors and a broadcast of A:
# - 16 vector registers (SSE2, AVX, AVX2): 6 rows x 2 = 12 accumulators + 2 panel vectors + 1 broadcast, and one
#   left for the product where there is no fused multiply-add;
# - 32 vector registers (AVX-512, NEON): 12 rows x 2 = 24 accumulators + 2 + 1, the shape of BLIS's AVX-512 kernel
#   (24 independent accumulators also cover two FMA units' latency of 4 cycles with room to spare).
VECTORS_PER_PANEL = 2
ROWS_BY_REGISTERS = {16: 6, 32: 12}


@dataclass(frozen=True)
class Target:
    """The code generator's target: LLVM triple, CPU name and feature string, as numba resolves them."""

    triple: str
    cpu_name: str
    features: str


@dataclass(frozen=True)
class Tile:
    """The panel kernels' register tile on one instruction set.

    ``isa`` names it (``avx512``, ``avx2``, ``avx``, ``sse2``, ``neon`` or ``generic``); ``vector_bits`` is one
    vector register's width, ``registers`` how many there are, ``fma`` whether a fused multiply-add exists (without
    one ``llvm.fmuladd`` becomes a multiply and an add), ``rows`` the rows of A per tile.
    """

    isa: str
    vector_bits: int
    registers: int
    fma: bool
    rows: int
    vectors: int = VECTORS_PER_PANEL

    def lanes(self, dtype):
        """Elements of ``dtype`` per vector register."""
        return self.vector_bits // 8 // np.dtype(dtype).itemsize

    def panel_width(self, dtype):
        """Columns per panel for ``dtype``: ``vectors`` registers' worth."""
        return self.vectors * self.lanes(dtype)

    def describe(self):
        widths = ", ".join(f"{self.panel_width(dtype)} {dtype}" for dtype in ("float32", "float64"))
        return (
            f"{self.isa}: {self.vector_bits}-bit vectors, {self.registers} registers, "
            f"{'fused multiply-add' if self.fma else 'multiply then add (no FMA)'}; "
            f"tile {self.rows} rows x {self.vectors} vectors, panels of {widths} columns"
        )


def target():
    """The (triple, CPU name, features) numba compiles for in this process (see the module's docstring)."""
    import llvmlite.binding as ll
    from numba.core import config

    cpu_name = config.CPU_NAME if config.CPU_NAME is not None else ll.get_host_cpu_name()
    if config.CPU_FEATURES is not None:
        features = config.CPU_FEATURES
    else:
        try:
            host = ll.get_host_cpu_features()
        except RuntimeError:
            features = ""
        else:
            if not config.ENABLE_AVX:
                for name in host:
                    if name.startswith("avx"):
                        host[name] = False
            features = host.flatten()
    return Target(ll.get_process_triple(), cpu_name, features)


def tile():
    """The register tile the panel kernels compiled in this process use (a pure function of :func:`target`)."""
    return tile_for(target())


@functools.cache
def tile_for(target):
    """The register tile for ``target`` (a :class:`Target`)."""
    arch = target.triple.split("-")[0]
    if arch in ("aarch64", "arm64", "aarch64_be"):
        # Advanced SIMD is part of the AArch64 base ISA: 32 registers of 128 bits and fused multiply-add everywhere
        return Tile("neon", 128, 32, True, ROWS_BY_REGISTERS[32])
    if arch not in ("x86_64", "amd64"):
        # other 64-bit targets: 128-bit vectors, which LLVM splits or widens as the machine needs
        return Tile("generic", 128, 16, False, ROWS_BY_REGISTERS[16])
    vector_bits, fma = _x86_vector_unit(target)
    registers = 32 if vector_bits == 512 else 16
    isa = {512: "avx512", 256: "avx2" if fma else "avx", 128: "sse2"}[vector_bits]
    return Tile(isa, vector_bits, registers, fma, ROWS_BY_REGISTERS[registers])


# A 512-bit multiply-add: LLVM keeps it in one zmm register with AVX-512, two ymm with AVX, four xmm with SSE; it uses
# a vfmadd instruction only where the target has FMA.
_PROBE = """
define void @probe(<16 x float>* %p) {
  %v = load <16 x float>, <16 x float>* %p
  %r = call <16 x float> @llvm.fmuladd.v16f32(<16 x float> %v, <16 x float> %v, <16 x float> %v)
  store <16 x float> %r, <16 x float>* %p
  ret void
}
declare <16 x float> @llvm.fmuladd.v16f32(<16 x float>, <16 x float>, <16 x float>)
"""


def _x86_vector_unit(target):
    """(vector bits, has FMA) of an x86-64 ``target``, read from LLVM's assembly for a probe function."""
    import llvmlite.binding as ll

    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    machine = ll.Target.from_triple(target.triple).create_target_machine(cpu=target.cpu_name, features=target.features)
    assembly = machine.emit_assembly(ll.parse_assembly(_PROBE))
    vector_bits = 512 if "%zmm" in assembly else 256 if "%ymm" in assembly else 128
    return vector_bits, "vfmadd" in assembly


# -- caches ------------------------------------------------------------------------------------------------------------

# Used when the host does not say: the smallest per-core L2 of current x86-64 and Arm server cores (256 KiB on Intel
# client cores and on Arm Neoverse N1's smallest configuration); blocks that fit it fit any larger L2, at a small cost
# in loop overhead there.
DEFAULT_L2_BYTES = 256 * 1024


@dataclass(frozen=True)
class Caches:
    """The per-core L2 cache size in bytes and whether it was read from the host (else the default), and the size of
    the last cache level past the L2 (the L3 shared by a group of cores), None where the host does not say or has
    none."""

    l2: int
    from_host: bool
    last_level: int | None = None


@functools.cache
def caches():
    """The host's per-core L2 cache size and its last-level cache, read once: Linux's sysfs, macOS's sysctl, else the
    default (and no last level).

    (Python's ``os.sysconf`` does not know glibc's ``_SC_LEVEL2_CACHE_SIZE`` name, and sysfs is where glibc reads it
    on Arm, so sysfs is read directly.)
    """
    if sys.platform.startswith("linux"):
        l2, last_level = _linux_cache(2), _linux_cache(3)
    elif sys.platform == "darwin":
        l2, last_level = _macos_l2(), None  # Apple silicon's system cache is not reported as an L3
    else:
        l2 = last_level = None
    if not (last_level and 1024**2 <= last_level <= 64 * 1024**3):
        last_level = None
    if l2 and 64 * 1024 <= l2 <= 1024**3:
        return Caches(l2, True, last_level)
    return Caches(DEFAULT_L2_BYTES, False, last_level)


def _linux_cache(level, root=Path("/sys/devices/system/cpu/cpu0/cache")):
    """The size in bytes of cpu0's data or unified cache of ``level``, or None."""
    try:
        for index in sorted(root.glob("index*")):
            if int((index / "level").read_text()) == level and (index / "type").read_text().strip() != "Instruction":
                return _parse_size((index / "size").read_text())
    except (OSError, ValueError):
        pass
    return None


def _parse_size(text):
    """'512K' / '1M' / '524288' (sysfs) in bytes."""
    text = text.strip().upper()
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:], 1)
    return int(text.rstrip("KMGB")) * scale


def _sysctl(name):
    try:
        return int(subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5, check=True).stdout)
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def _macos_l2():
    # Apple silicon: the performance cores' L2 (hw.perflevel0), shared by a cluster of cores; Intel Macs: per core
    shared = _sysctl("hw.perflevel0.l2cachesize")
    if shared:
        return shared // max(1, _sysctl("hw.perflevel0.cpusperl2") or 1)
    return _sysctl("hw.l2cachesize")
