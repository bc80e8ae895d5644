"""How the node uses the cyclic garbage collector, and memory a big request freed goes back to the system.

A request allocates hundreds of containers that die with it, nearly all freed by their reference counts
(an audited search's AuditEvent alone holds ~250 dicts, and waits with those of the other requests of its
loop turn for their one commit: `audit.trail`). At CPython's default threshold (700 allocations in excess
of deallocations) those peaks set off a young collection every few audited searches and an older one
every ~10 of those: with the compare's mix, 713-718 against 673-680 us of CPU per audited search
(measured, `collect_less`), and a longer p95 (4.5-5.5 against 3.0 ms).

Memory a big request freed goes back to the system. CPython frees a 10,000-entry Bundle's objects, but
glibc keeps the freed pages in its arenas (one per worker thread), so the process stayed near its peak
after such a Bundle (see benchmarks/bundle_memory.py); `malloc_trim` returns them. Elsewhere than glibc
it does nothing."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None)
_MALLOC_TRIM = getattr(_LIBC, "malloc_trim", None)
#: Allocations in excess of deallocations that start a young collection: well above any one request's peak,
#: so that collections come from garbage that outlives requests, not from their peaks.
YOUNG_THRESHOLD = 50_000
#: Requests whose body is at least this big are followed by a trim (it costs a few milliseconds).
BIG_BODY_BYTES = 1024 * 1024


def give_back() -> None:
    """Collect cyclic garbage, then hand free heap pages back to the system."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def collect_less() -> None:
    """At startup: young collections come only past YOUNG_THRESHOLD, and what exists at the first startup of
    the process (definitions, plans, routes: it lives as long as the process) is left out of every later
    collection. Only the first: a process that starts apps again (tests) would keep each one's garbage."""
    if gc.get_threshold()[0] != YOUNG_THRESHOLD:
        gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
