"""Thread pools of numerical libraries: one BLAS thread for small matrix products.

A multi-threaded BLAS (OpenBLAS, MKL) spends far longer synchronising its threads than
computing on small matrices, badly so on a loaded machine: a 104 x 104 ``eigh`` measured 200x
slower with OpenBLAS threads than with one, and the mel filterbank of one streaming window
(80 x 201 by 201 x ~60) took 16 ms median / 112 ms p95 with 2 OpenBLAS threads against 6 / 9 ms
with one, on a 2-core machine.
"""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

_controller = None


def single_thread_blas():
    """Context: BLAS limited to one thread inside the block (a no-op without ``threadpoolctl``).

    Uses one cached ``ThreadpoolController`` (about 10 us per use, against 250 us for
    ``threadpool_limits``, which looks up the loaded libraries every time).
    """
    global _controller
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional
        return contextlib.nullcontext()
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")


def cpu_attention(device) -> contextlib.AbstractContextManager:
    """Context: on a CPU ``device``, PyTorch's scaled-dot-product attention runs its plain
    ("math") kernel inside the block; elsewhere a no-op.

    The same maths. For the short sequences of these models (16-32 keys, head size 32) the fused
    CPU flash-attention kernel, which PyTorch picks whenever attention dropout is off, is far
    slower: its backward took 19 ms a call against well under 1 ms for the plain kernel, which
    made a REALM training step without dropout 2x slower (benchmarks/bench_train.py).
    """
    if getattr(device, "type", str(device)) != "cpu":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


#: torch threads for generation by default. These models' matrices are small (batch 1, d 128-512):
#: one thread is fastest, and more threads busy-wait for each other. ``realm generate`` on 60 s of
#: speech, 3 samples, 2-core machine: 7.4 s on one thread against 48 s on torch's default (2).
GENERATE_THREADS = 1


def set_torch_threads(n: int) -> None:
    """torch intra-op threads for this process: ``n`` > 0, or torch's own default (the cores) for 0."""
    import torch

    if n < 0:
        raise ValueError(f"threads must be >= 0, got {n}")
    if n:
        torch.set_num_threads(n)



def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else what ``platform`` knows): benchmarks print
    it beside every number."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
