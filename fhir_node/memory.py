"""Memory a big request freed goes back to the system. CPython frees a 10,000-entry Bundle's objects, but
glibc keeps the freed pages in its arenas (one per worker thread), so the process stayed near its peak
after such a Bundle (see benchmarks/bundle_memory.py); `malloc_trim` returns them. Elsewhere than glibc
it does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)
_MALLOC_TRIM = getattr(_LIBC, "malloc_trim", None)
#: Requests whose body is at least this big are followed by a trim (it costs a few milliseconds).
BIG_BODY_BYTES = 1024 * 1024


def give_back() -> None:
    """Collect cyclic garbage, then hand free heap pages back to the system."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
