"""The panel product every projection and time step of numbarnn runs (``numbarnn._panels.panel_matmul``), over its row
count M, and the same product through the BLAS numba's ``np.dot`` calls (scipy's), on one thread.

The blocked product should keep its speed from M = 64 to 100,000 (within 15 % of its best); ``python -m numbarnn
bench --kernels`` prints the whole grid with the CPU and tile in use. Each benchmark is its own class, so asv times
each library in its own process; the BLAS is limited to one thread through threadpoolctl before it runs.
"""

import numpy as np

from numbarnn._panels import pack_panels, panel_matmul, panel_shape

# (M, K, N): the per-step product (64 rows), and input projections over 1,024 to 100,000 rows
PARAMS = [[64, 1024, 12800, 100000], ["256x256", "512x1024"], ["float32", "float64"]]
PARAM_NAMES = ["rows", "shape", "dtype"]


def _operands(rows, shape, dtype):
    k, n = (int(size) for size in shape.split("x"))
    rng = np.random.default_rng(0)
    return (
        rng.standard_normal((rows, k)).astype(dtype),
        rng.standard_normal((k, n)).astype(dtype),
        np.empty((rows, n), dtype),
    )


class PanelProduct:
    """``panel_matmul(a, panels, out)``, B packed once in setup (as the kernels pack a weight once per call)."""

    params = PARAMS
    param_names = PARAM_NAMES

    def setup(self, rows, shape, dtype):
        self.a, b, self.out = _operands(rows, shape, dtype)
        self.panels = np.empty(panel_shape(*b.shape, dtype), dtype)
        pack_panels(b, self.panels)
        panel_matmul(self.a, self.panels, self.out)  # compiles, or loads the cache

    def time_panel_matmul(self, rows, shape, dtype):
        panel_matmul(self.a, self.panels, self.out)


class BlasProduct:
    """The same product through numba's ``np.dot`` (scipy's BLAS), one thread."""

    params = PARAMS
    param_names = PARAM_NAMES

    def setup(self, rows, shape, dtype):
        from threadpoolctl import threadpool_limits

        from numbarnn.cli.bench_worker import _jitted_matmul

        self.a, self.b, self.out = _operands(rows, shape, dtype)
        self.matmul = _jitted_matmul()
        self.matmul(self.a, self.b, self.out)  # compiling loads scipy's BLAS, which threadpoolctl then limits
        self.limits = threadpool_limits(1)

    def teardown(self, rows, shape, dtype):
        self.limits.restore_original_limits()

    def time_blas_matmul(self, rows, shape, dtype):
        self.matmul(self.a, self.b, self.out)
