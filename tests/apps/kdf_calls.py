"""Calls of ``hashlib.pbkdf2_hmac`` and ``hashlib.scrypt`` described as JSON,
run the same way in the guest (the fixture's ``/kdf``) and in native CPython
(by the tests), so that their results and exceptions can be compared."""

import hashlib


def kdf_call(spec):
    """Calls ``hashlib.<fn>(*args, **kwargs)`` as ``spec`` describes it,
    strings ``hex:...`` being bytes; the key in hex, or the exception."""

    def value(v):
        return bytes.fromhex(v[4:]) if isinstance(v, str) and v.startswith("hex:") else v

    try:
        fn = getattr(hashlib, spec["fn"])
        key = fn(*map(value, spec.get("args", [])), **{k: value(v) for k, v in spec.get("kwargs", {}).items()})
        return {"hex": key.hex()}
    except Exception as e:  # noqa: BLE001 - the comparison covers exceptions too
        return {"error": type(e).__name__, "message": str(e), "is_value_error": isinstance(e, ValueError)}
