"""Start-up cost, each sample in a fresh Python process: ``import numbarnn`` and the first forward call.

With a cold JIT cache the first call compiles the forward kernels; with a warm cache it only loads them from disk.
The cache is never numbarnn's own ``__pycache__``: each timed process gets its own ``NUMBA_CACHE_DIR``, a fresh empty
directory for ``cold`` and a directory filled once by ``setup_cache`` for ``warm``.
"""

import os
import subprocess
import sys
import textwrap

# The first call a user makes: a module in its default (training) mode on a float32 batch.
FIRST_CALL = """
import numbarnn
rnn = numbarnn.RNN(64, 128, seed=0)
rnn(x)
"""

DATA = """
import numpy as np
x = np.random.default_rng(0).standard_normal((50, 16, 64)).astype(np.float32)
"""


def cache_setup_code(cache_dir):
    """Source that points numba's cache at ``cache_dir`` (None: a fresh temporary directory, removed at exit).

    It must run before numba is imported: numba reads ``NUMBA_CACHE_DIR`` once, at import.
    """
    if cache_dir is None:
        return textwrap.dedent("""
            import atexit, os, shutil, tempfile
            cache_dir = tempfile.mkdtemp(prefix="numbarnn-cold-jit-")
            atexit.register(shutil.rmtree, cache_dir, True)
            os.environ["NUMBA_CACHE_DIR"] = cache_dir
        """)
    return f"import os\nos.environ['NUMBA_CACHE_DIR'] = {os.fspath(cache_dir)!r}\n"


def timeraw_import_numbarnn():
    """``import numbarnn`` alone (numba and NumPy included; no compilation happens at import)."""
    return "import numbarnn", "import numpy"


class FirstForward:
    """``import numbarnn`` plus the first forward call, with a cold and with a warm JIT cache."""

    params = [["cold", "warm"]]
    param_names = ["jit_cache"]
    # A cold sample compiles for tens of seconds: take few samples, in one round, without a warm-up run.
    timeout = 600
    rounds = 1
    repeat = (1, 3, 60.0)
    warmup_time = 0
    min_run_count = 1

    def setup_cache(self):
        """Fill a JIT cache (in asv's temporary working directory) by running the first call once."""
        warm_dir = os.path.abspath("numba-cache-warm")
        os.makedirs(warm_dir, exist_ok=True)
        code = cache_setup_code(warm_dir) + DATA + FIRST_CALL
        subprocess.run([sys.executable, "-c", code], check=True)
        return warm_dir

    def timeraw_import_and_first_forward(self, warm_dir, jit_cache):
        setup = cache_setup_code(None if jit_cache == "cold" else warm_dir) + DATA
        return FIRST_CALL, setup
