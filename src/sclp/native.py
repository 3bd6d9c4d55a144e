"""Which per-frame modules run compiled.

A wheel built with ``SCLP_MYPYC=1`` (``hatch_build.py``; see docs/performance.md)
carries :data:`MYPYC_MODULES` compiled by mypyc from this same typed source, as
extension modules beside their ``.py`` files, which the import system prefers.  A
plain install (and the editable one of the quick start) runs them as pure Python.  The
behaviour is the same either way: the same tests run on both.

This module imports nothing of ours: the build hook reads the list from its source.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from typing import Final

# The modules a frame passes through, and the ones whose classes those subclass
# (an interpreted class cannot subclass a compiled one).  Not here: sclp.io._mmsg
# (mypyc 2.4 fails internally on a starred argument and, with that rewritten, emits C
# that does not compile for its ctypes structures), sclp.io.tap (a class that subclasses a
# builtin), sclp.wire.sclp (compiled, its argument checks raise TypeError where the
# documented ValueError is expected).
MYPYC_MODULES: Final = (
    "sclp.wire.checksum",
    "sclp.wire.frame",
    "sclp.wire.geneve",
    "sclp.wire.nvgre",
    "sclp.wire.vxlan",
    "sclp.engine.reassembler",
    "sclp.engine.segmenter",
    "sclp.engine.stt",
    "sclp.engine.table",
    "sclp.engine.tso",
    "sclp.switch.fdb",
    "sclp.io.udp",
    "sclp.endpoint.datapath",
    "sclp.endpoint.runner",
    "sclp.endpoint.tunnels",
)


def compiled() -> list[str]:
    """The modules of :data:`MYPYC_MODULES` this interpreter loads compiled (an
    extension module where the import system looks first), found without importing
    them."""
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = []
    for name in MYPYC_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin is not None and spec.origin.endswith(suffixes):
            found.append(name)
    return found
