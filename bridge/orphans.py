"""Children that do not outlive ``bridge run``, even when it is killed with SIGKILL.

``bridge run`` stops its children itself on SIGHUP, SIGINT and SIGTERM; a SIGKILL (the
OOM killer, ``kill -9``) gives it no chance. On Linux the kernel can then signal each
child instead (``prctl(PR_SET_PDEATHSIG)``): they get SIGTERM, the same clean stop.
Elsewhere nothing is set, and the next ``bridge run`` stops what was left (its Redis).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel for SIGTERM when this process dies, or None
    where the kernel cannot (not Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    # Looked up here, before the fork: the child only calls it.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def in_child() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the call: nobody will tell
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child
