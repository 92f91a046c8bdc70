"""What CPython for WASI leaves out of ``os`` that pure-Python libraries
take for granted on a POSIX system.

WASI has no users or groups, so CPython's WASI build has no ``os.getuid``
and its kin. Libraries that run on "anything but Windows" import them at
module level all the same: setuptools' vendored platformdirs does
``from os import getuid``, so ``import pkg_resources``, and with it Pyramid,
fails before any app code runs.

``install`` adds them, answering as Emscripten's libc does for CPython in
the browser (Pyodide): user and group 0. That also agrees with what the
sandbox reports for files, whose ``st_uid`` and ``st_gid`` are 0 (WASI has
no owners). The sandbox's capabilities do not depend on these answers: what
a request may touch is what the host granted it.
"""

import os

_IDENTITY = ("getuid", "geteuid", "getgid", "getegid")


def install():
    """Adds the missing identity functions to ``os``. Build time only."""
    for name in _IDENTITY:
        if not hasattr(os, name):
            fn = lambda: 0  # noqa: E731 - a fresh function per name, for its __name__
            fn.__name__ = fn.__qualname__ = name
            fn.__doc__ = "Return 0: WASI has no users or groups (see wsgi_wasm.posix)."
            setattr(os, name, fn)
