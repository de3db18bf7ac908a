"""
Time per step against sequence length
=====================================

How the cost of a call of :class:`numbarnn.RNN` grows with the sequence length L, in inference and in a training step
(forward + backward). A call has a fixed cost (argument checks, buffers, numba's dispatch, packing the weights) and
then costs the same for every step, so the time per step falls towards a floor as L grows.

**Measured while this page was built**, on the machine that built it (printed below), with other work possibly
running on it: the figures show the shape of the curve, not a benchmark. For fair figures against PyTorch, see
{doc}`plot_speed_vs_torch` and {doc}`../guide/speed`.
"""

import datetime
import os
import platform
import time

import matplotlib.pyplot as plt
import numba
import numpy as np
from llvmlite import binding

import numbarnn


def cpu_model():
    """The CPU's model name, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


# One thread: with several, each call's threads wait for one another, and on a machine shared with other work (as a
# documentation build often is) a thread the system has paused can cost a whole time slice of the scheduler.
threads_before = numba.get_num_threads()
numba.set_num_threads(1)
load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
print(
    f"measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {cpu_model()} "
    f"(LLVM's CPU {binding.get_host_cpu_name()}), {numba.get_num_threads()} numba thread, "
    f"load average {load:.2f} before, numbarnn {numbarnn.__version__}, numba {numba.__version__}"
)

# %%
# The measurement
# ---------------
# One layer, N = 32 sequences, H_in = 64, H = 128, float32 (the bench's "small" sizes, one layer), one thread. Each
# point is the median of 7 samples; a sample is the mean of back-to-back calls lasting at least 20 ms. The first calls
# load the compiled kernels (or compile them, on an empty cache) and are not timed.

N, H_IN, H = 32, 64, 128
LENGTHS = [1, 3, 10, 30, 100, 300, 1000]
rng = np.random.default_rng(0)
inference = numbarnn.RNN(H_IN, H, seed=0).eval()
training = numbarnn.RNN(H_IN, H, seed=0)


def seconds_per_call(call, samples=7, min_seconds=0.02):
    call()  # warm up: load (or compile) the kernels, allocate the buffers of this shape
    calls = 1
    while True:  # how many calls make a sample of at least min_seconds
        started = time.perf_counter()
        for _ in range(calls):
            call()
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            break
        calls *= 2
    timings = [elapsed / calls]
    for _ in range(samples - 1):
        started = time.perf_counter()
        for _ in range(calls):
            call()
        timings.append((time.perf_counter() - started) / calls)
    return float(np.median(timings))


def training_step(x, grad_output):
    training.zero_grad()
    training(x)
    training.backward(grad_output, need_input_grad=False)


forward_seconds, training_seconds = [], []
for length in LENGTHS:
    x = rng.standard_normal((length, N, H_IN)).astype(np.float32)
    grad_output = rng.standard_normal((length, N, H)).astype(np.float32)
    forward_seconds.append(seconds_per_call(lambda x=x: inference(x)))
    training_seconds.append(seconds_per_call(lambda x=x, g=grad_output: training_step(x, g)))
    print(
        f"L = {length:>4}: inference {forward_seconds[-1] * 1e3:8.3f} ms a call, "
        f"{forward_seconds[-1] / length * 1e6:7.2f} µs a step; training {training_seconds[-1] * 1e3:8.3f} ms a "
        f"call, {training_seconds[-1] / length * 1e6:7.2f} µs a step"
    )
numba.set_num_threads(threads_before)  # the setting is per thread: give this one's back

# %%
# Time per call and per step
# --------------------------

fig, (per_call, per_step) = plt.subplots(1, 2, figsize=(10, 4))
for seconds, label in ((forward_seconds, "inference (eval mode)"), (training_seconds, "training step")):
    per_call.loglog(LENGTHS, np.array(seconds) * 1e3, "o-", label=label)
    per_step.loglog(LENGTHS, np.array(seconds) / LENGTHS * 1e6, "o-", label=label)
per_call.set_xlabel("sequence length L")
per_call.set_ylabel("ms per call")
per_step.set_xlabel("sequence length L")
per_step.set_ylabel("µs per time step")
per_call.legend()
per_step.legend()
fig.suptitle(
    f"numbarnn.RNN({H_IN}, {H}), N = {N}, float32, 1 thread: measured while these docs were built, on {cpu_model()}",
    fontsize=10,
)
fig.tight_layout()
