"""device.keep_heap: the memory a training step frees stays in the process for the next step.

glibc's malloc gives an allocation above its mmap threshold its own mapping and unmaps it when
it is freed, and it hands the heap's free top back to the kernel once more than its trim
threshold lies there. Both thresholds start small (128 KiB) and move with the sizes freed. A
training step allocates and frees the same large tensors every step (the decoder weight cast
to bf16, its gradient, the activations); with those thresholds many of them are mapped or
trimmed and mapped again, and every page of them is faulted in and zeroed by the kernel anew,
step after step. docs/benchmarks.md has the measured cost and the gain.

With the mmap threshold at glibc's maximum (32 MiB on 64-bit) and the trim threshold at
TRIM_BYTES, such blocks come from the heap and stay there, and the next step reuses the same
pages. The cost: freed memory is kept rather than returned to the system (up to TRIM_BYTES
of it at the top of each heap), so the resident size can stay higher than before. Larger
blocks (the fused loss's logits buffer, which it reuses itself) are still mapped on their own.

The setting is process-wide, and glibc's moving thresholds cannot be turned back on: once set
in a process it stays set, and a later run in that process (a sequential sweep) asking for
keep_heap=false gets a warning. Nothing is done where the C library is not glibc (macOS,
musl), where another allocator is preloaded, or where the user set glibc's own malloc
variables (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_, GLIBC_TUNABLES): theirs win.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_BYTES = 32 * 2**20  # glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_BYTES = 256 * 2**20
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
_USER_TUNABLES = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold",
                  "glibc.malloc.top_pad")  # fmt: skip

_set_in_this_process = False


def _why_not() -> str | None:
    """Why glibc's thresholds are not to be set here, or None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    # an allocator in LD_PRELOAD replaces malloc: jemalloc, tcmalloc and mimalloc all say so
    if "malloc" in os.environ.get("LD_PRELOAD", ""):
        return "another allocator is preloaded (LD_PRELOAD)"
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if any(v in os.environ for v in _USER_SETTINGS) or any(t in tunables for t in _USER_TUNABLES):
        return "glibc's malloc thresholds are set in the environment"
    return None


def keep_heap(on: bool) -> bool:
    """Set glibc's thresholds as above when `on`; returns whether they are set in this
    process now (False where glibc's malloc is not in use or the user tuned it, and for `on`
    False before any run of this process set them)."""
    global _set_in_this_process
    if not on:
        if _set_in_this_process:
            log.warning("device.keep_heap=false: an earlier run in this process set it, and "
                        "it cannot be undone; run this one in a process of its own")  # fmt: skip
        return _set_in_this_process
    if _set_in_this_process:
        return True
    why = _why_not()
    if why is not None:
        log.info("device.keep_heap: malloc left as it is (%s)", why)
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # no loadable libc, or one without mallopt
        return False
    # The mmap threshold first: where it is refused (a 32-bit glibc), nothing is changed.
    if mallopt(M_MMAP_THRESHOLD, MMAP_BYTES) != 1:
        log.warning("device.keep_heap: glibc refused the mmap threshold; malloc left as it was")
        return False
    _set_in_this_process = True
    if mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) != 1:
        log.warning("device.keep_heap: glibc refused the trim threshold; a freed heap top is "
                    "still handed back")  # fmt: skip
    return True
