"""device.keep_heap: the memory a training step frees stays in the process for the next step.

glibc's malloc gives an allocation above its mmap threshold (128 KiB at first, raised on the
fly as large blocks are freed) its own mapping, and unmaps it when it is freed; it also hands
the heap's free top back to the kernel once more than the trim threshold lies there. A
training step allocates and frees the same tens of megabytes every step (the decoder weight
cast to bf16, its gradient, the activations), so with those defaults each step maps them
again, and the kernel faults in and zeroes every 4 KiB page of them anew: tens of thousands of
page faults a step for the tutorial's model, a large share of a CPU step's time.

With the mmap threshold at glibc's maximum (32 MiB) and the trim threshold raised, such
blocks come from the heap and stay there, and the next step reuses the same pages. The
cost: up to TRIM_BYTES of freed memory stay counted in the process's resident size. Larger
blocks (the fused loss's logits buffer, which it reuses itself) are still mapped on their
own. Other C libraries (macOS, musl) are left as they are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_BYTES = 32 * 2**20  # glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_BYTES = 256 * 2**20


def keep_heap(on: bool) -> bool:
    """Set glibc's thresholds as above when `on`; returns whether they were set (False where
    the C library is not glibc, or `on` is False: then malloc keeps its defaults)."""
    if not on or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = libc.mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) == 1
        done = libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1 and done
    except (OSError, AttributeError):  # no loadable libc, or one without mallopt
        return False
    if not done:
        log.warning("device.keep_heap: glibc refused the malloc thresholds; left as they were")
    return done
