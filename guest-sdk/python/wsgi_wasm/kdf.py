"""``hashlib.pbkdf2_hmac`` and ``hashlib.scrypt``, computed by the host.

CPython takes both from OpenSSL, which the guest's CPython was built without,
so its ``hashlib`` has neither: Django cannot check a password, and Werkzeug
cannot hash one. In WebAssembly, pure Python would take minutes for Django's
million PBKDF2 iterations. So the host computes them (``wsgi-wasm:guest/kdf``),
under the request's own limits: the work stops at its ``--timeout``, counts
as its CPU (``--fuel``), and scrypt's memory counts against its ``--memory``.

The functions have CPython's signatures and raise CPython's exceptions, with
its messages, for the same bad arguments: the argument parsing happens here,
in CPython's order, and the host checks every value again (the guest is not
trusted) and refuses what CPython would refuse. ``install`` puts them into
``hashlib`` at build time, so the snapshot has them wherever an app looks.
"""

import hashlib
import operator

from componentize_py_types import Err

from wit_world.imports import kdf as _kdf

_INT_MAX = 2**31 - 1
_LONG_MAX = 2**63 - 1
_ULONG_MAX = 2**64 - 1

# Set while the app is built: the host computes, and there is no host yet.
building = False


class UnsupportedDigestmodError(ValueError):
    """A hash that ``pbkdf2_hmac`` does not take (as ``_hashlib``'s)."""


def _buffer(obj):
    """A bytes-like argument, as CPython's ``Py_buffer`` conversion takes it."""
    if isinstance(obj, str):
        raise TypeError(f"a bytes-like object is required, not '{type(obj).__name__}'")
    try:
        return memoryview(obj).tobytes()
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not '{type(obj).__name__}'") from None


def _c_long(obj):
    """An integer argument converted to a C ``long`` (64-bit, as on Linux)."""
    value = operator.index(obj)
    if not -_LONG_MAX - 1 <= value <= _LONG_MAX:
        raise OverflowError("Python int too large to convert to C long")
    return value


def _call(name, *args):
    """Calls the host's `name`, raising what the host refused as CPython
    would raise it."""
    if building:
        raise RuntimeError(
            "wsgi-wasm: hashlib.pbkdf2_hmac and hashlib.scrypt are computed by the host, "
            "which a request has and the build does not; derive keys in a request"
        )
    try:
        return getattr(_kdf, name)(*args)
    except Err as e:
        error = e.value
        raise _RAISED[type(error).__name__](error.value) from None


# How each of the host's refusals reaches the app (`kdf-error`'s cases).
_RAISED = {
    "KdfError_Invalid": ValueError,
    "KdfError_Overflow": OverflowError,
    "KdfError_UnsupportedHash": UnsupportedDigestmodError,
    "KdfError_OutOfMemory": MemoryError,
}


def _bind(fname, args, kwargs, names, positional, required):
    """The arguments of a call, bound as CPython's Argument Clinic binds
    them for a builtin (the first ``positional`` of ``names`` by position or
    name, the rest by name only), with its messages; a dict by name."""
    if len(args) > positional:
        if positional == len(names):
            raise TypeError(f"{fname}() takes at most {positional} arguments ({len(args)} given)")
        raise TypeError(f"{fname}() takes exactly {positional} positional argument ({len(args)} given)")
    bound = {}
    for i, name in enumerate(names):
        if i < len(args):
            if name in kwargs:
                raise TypeError(f"argument for {fname}() given by name ('{name}') and position ({i + 1})")
            bound[name] = args[i]
        elif name in kwargs:
            bound[name] = kwargs[name]
        elif i < required:
            raise TypeError(f"{fname}() missing required argument '{name}' (pos {i + 1})")
    for name in kwargs:
        if name not in names:
            raise TypeError(f"'{name}' is an invalid keyword argument for {fname}()")
    return bound


def pbkdf2_hmac(*args, **kwargs):
    """Password based key derivation function 2 (PKCS #5 v2.0) with HMAC as
    pseudorandom function."""
    given = _bind("pbkdf2_hmac", args, kwargs, ("hash_name", "password", "salt", "iterations", "dklen"), 5, 4)
    hash_name, password, salt, iterations = (given[k] for k in ("hash_name", "password", "salt", "iterations"))
    dklen = given.get("dklen")
    if not isinstance(hash_name, str):
        raise TypeError(f"pbkdf2_hmac() argument 'hash_name' must be str, not {type(hash_name).__name__}")
    password = _buffer(password)
    salt = _buffer(salt)
    iterations = _c_long(iterations)
    if dklen is not None:
        dklen = _c_long(dklen)
    # Values out of the host's range are refused by it with CPython's
    # messages; clamp them so that they cross the boundary at all.
    iterations = min(max(iterations, 0), _LONG_MAX)
    dklen = None if dklen is None else min(max(dklen, 0), _LONG_MAX)
    return _call("pbkdf2_hmac", hash_name, password, salt, iterations, dklen)


def _unsigned(value, name):
    """``n``, ``r`` or ``p``, converted as CPython converts them (an
    unsigned long), with its error."""
    if value is None or value < 0 or value > _ULONG_MAX:
        raise TypeError(f"{name} is required and must be an unsigned int")
    return value


def scrypt(*args, **kwargs):
    """scrypt password-based key derivation function."""
    given = _bind("scrypt", args, kwargs, ("password", "salt", "n", "r", "p", "maxmem", "dklen"), 1, 1)
    password = _buffer(given["password"])
    salt, n, r, p = (given.get(k) for k in ("salt", "n", "r", "p"))
    maxmem, dklen = given.get("maxmem", 0), given.get("dklen", 64)
    if salt is not None:
        salt = _buffer(salt)
    for name, value in (("n", n), ("r", r), ("p", p)):
        if value is not None and not isinstance(value, int):
            raise TypeError(f"scrypt() argument '{name}' must be int, not {type(value).__name__}")
    maxmem = _c_long(maxmem)
    dklen = _c_long(dklen)
    if len(password) > _INT_MAX:
        raise OverflowError("password is too long.")
    if salt is None:
        raise TypeError("salt is required")
    if len(salt) > _INT_MAX:
        raise OverflowError("salt is too long.")
    n = _unsigned(n, "n")
    if n < 2 or n & (n - 1):
        raise ValueError("n must be a power of 2.")
    r = _unsigned(r, "r")
    p = _unsigned(p, "p")
    if maxmem < 0 or maxmem > _INT_MAX:
        raise ValueError(f"maxmem must be positive and smaller than {_INT_MAX}")
    if dklen < 1 or dklen > _INT_MAX:
        raise ValueError(f"dklen must be greater than 0 and smaller than {_INT_MAX}")
    return _call("scrypt", password, salt, n, r, p, maxmem, dklen)


def _signatures():
    """The builtins' signatures, for ``inspect.signature`` and ``help``."""
    from inspect import Parameter, Signature

    def params(kind, *names, **defaults):
        return [Parameter(n, kind) for n in names] + [Parameter(n, kind, default=d) for n, d in defaults.items()]

    pbkdf2_hmac.__signature__ = Signature(
        params(Parameter.POSITIONAL_OR_KEYWORD, "hash_name", "password", "salt", "iterations", dklen=None)
    )
    scrypt.__signature__ = Signature(
        params(Parameter.POSITIONAL_OR_KEYWORD, "password")
        + params(Parameter.KEYWORD_ONLY, salt=None, n=None, r=None, p=None, maxmem=0, dklen=64)
    )


def install():
    """Makes ``hashlib.pbkdf2_hmac`` and ``hashlib.scrypt`` these, as a
    CPython built with OpenSSL has them. Build time only."""
    _signatures()
    hashlib.pbkdf2_hmac = pbkdf2_hmac
    hashlib.scrypt = scrypt
    if "pbkdf2_hmac" not in hashlib.__all__:
        hashlib.__all__ += ("pbkdf2_hmac",)
    pbkdf2_hmac.__module__ = scrypt.__module__ = "hashlib"
