"""The guest's ``_ssl``: the standard ``ssl`` module imports, and TLS is refused.

CPython for WASI is built without OpenSSL, so it has no ``_ssl`` and
``import ssl`` fails. Many pure-Python clients import ``ssl`` whether or not
they are asked for TLS: scramp (pg8000's SCRAM login) imports ``SSLSocket``
at its top, redis-py imports it in several modules. None of them can be
hosted while the import fails.

This module stands in for the C extension, so that the real ``ssl.py`` of the
standard library imports unchanged: its constants, enums, exceptions and
``SSLContext`` class are all there. A context can be created and configured,
as libraries do while they set up. No TLS is ever spoken: the moment a
context would start a handshake (``wrap_socket``, ``wrap_bio``), it raises
``ssl.SSLError`` saying that the sandbox has no TLS. Nothing is sent in the
clear in its place.

The constants have OpenSSL 3's values, so that code which compares or
combines them behaves as with a real build; ``OPENSSL_VERSION`` and the
``HAS_*`` flags say that there is no TLS library.
"""

import os as _os

OPENSSL_VERSION = "none: wsgi-wasm's guest has no TLS library"
OPENSSL_VERSION_INFO = (0, 0, 0, 0, 0)
OPENSSL_VERSION_NUMBER = 0
_OPENSSL_API_VERSION = (0, 0, 0, 0, 0)
_DEFAULT_CIPHERS = "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"

NO_TLS = (
    "wsgi-wasm: TLS is not available in the sandbox (its Python has no OpenSSL); "
    "connect to the granted address in plain text, or through a TLS proxy on the host's side"
)

# Nothing below is supported: there is no TLS library to support it.
HAS_SNI = HAS_ECDH = HAS_NPN = HAS_ALPN = False
HAS_SSLv2 = HAS_SSLv3 = HAS_TLSv1 = HAS_TLSv1_1 = HAS_TLSv1_2 = HAS_TLSv1_3 = False
HAS_PSK = HAS_PHA = False

CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED = 0, 1, 2

PROTOCOL_SSLv23 = PROTOCOL_TLS = 2
PROTOCOL_TLSv1, PROTOCOL_TLSv1_1, PROTOCOL_TLSv1_2 = 3, 4, 5
PROTOCOL_TLS_CLIENT, PROTOCOL_TLS_SERVER = 16, 17

PROTO_MINIMUM_SUPPORTED, PROTO_MAXIMUM_SUPPORTED = -2, -1
PROTO_SSLv3, PROTO_TLSv1, PROTO_TLSv1_1, PROTO_TLSv1_2, PROTO_TLSv1_3 = 0x300, 0x301, 0x302, 0x303, 0x304

OP_ALL = 0x80000054
OP_NO_SSLv2 = 0
OP_NO_SSLv3 = 0x02000000
OP_NO_TLSv1 = 0x04000000
OP_NO_TLSv1_1 = 0x10000000
OP_NO_TLSv1_2 = 0x08000000
OP_NO_TLSv1_3 = 0x20000000
OP_NO_COMPRESSION = 0x00020000
OP_CIPHER_SERVER_PREFERENCE = 0x00400000
OP_SINGLE_DH_USE = 0
OP_SINGLE_ECDH_USE = 0
OP_NO_TICKET = 0x00004000
OP_NO_RENEGOTIATION = 0x40000000
OP_ENABLE_MIDDLEBOX_COMPAT = 0x00100000
OP_IGNORE_UNEXPECTED_EOF = 0x00000080
OP_LEGACY_SERVER_CONNECT = 0x00000004
OP_ENABLE_KTLS = 0x00000008

VERIFY_DEFAULT = 0
VERIFY_CRL_CHECK_LEAF = 0x4
VERIFY_CRL_CHECK_CHAIN = 0xC
VERIFY_X509_STRICT = 0x20
VERIFY_ALLOW_PROXY_CERTS = 0x40
VERIFY_X509_TRUSTED_FIRST = 0x8000
VERIFY_X509_PARTIAL_CHAIN = 0x80000

HOSTFLAG_ALWAYS_CHECK_SUBJECT = 0x1
HOSTFLAG_NO_WILDCARDS = 0x2
HOSTFLAG_NO_PARTIAL_WILDCARDS = 0x4
HOSTFLAG_MULTI_LABEL_WILDCARDS = 0x8
HOSTFLAG_SINGLE_LABEL_SUBDOMAINS = 0x10
HOSTFLAG_NEVER_CHECK_SUBJECT = 0x20

ENCODING_PEM, ENCODING_DER = 1, 2

SSL_ERROR_SSL = 1
SSL_ERROR_WANT_READ = 2
SSL_ERROR_WANT_WRITE = 3
SSL_ERROR_WANT_X509_LOOKUP = 4
SSL_ERROR_SYSCALL = 5
SSL_ERROR_ZERO_RETURN = 6
SSL_ERROR_WANT_CONNECT = 7
SSL_ERROR_EOF = 8
SSL_ERROR_INVALID_ERROR_CODE = 10

ALERT_DESCRIPTION_CLOSE_NOTIFY = 0
ALERT_DESCRIPTION_UNEXPECTED_MESSAGE = 10
ALERT_DESCRIPTION_BAD_RECORD_MAC = 20
ALERT_DESCRIPTION_RECORD_OVERFLOW = 22
ALERT_DESCRIPTION_DECOMPRESSION_FAILURE = 30
ALERT_DESCRIPTION_HANDSHAKE_FAILURE = 40
ALERT_DESCRIPTION_BAD_CERTIFICATE = 42
ALERT_DESCRIPTION_UNSUPPORTED_CERTIFICATE = 43
ALERT_DESCRIPTION_CERTIFICATE_REVOKED = 44
ALERT_DESCRIPTION_CERTIFICATE_EXPIRED = 45
ALERT_DESCRIPTION_CERTIFICATE_UNKNOWN = 46
ALERT_DESCRIPTION_ILLEGAL_PARAMETER = 47
ALERT_DESCRIPTION_UNKNOWN_CA = 48
ALERT_DESCRIPTION_ACCESS_DENIED = 49
ALERT_DESCRIPTION_DECODE_ERROR = 50
ALERT_DESCRIPTION_DECRYPT_ERROR = 51
ALERT_DESCRIPTION_PROTOCOL_VERSION = 70
ALERT_DESCRIPTION_INSUFFICIENT_SECURITY = 71
ALERT_DESCRIPTION_INTERNAL_ERROR = 80
ALERT_DESCRIPTION_USER_CANCELLED = 90
ALERT_DESCRIPTION_NO_RENEGOTIATION = 100
ALERT_DESCRIPTION_UNSUPPORTED_EXTENSION = 110
ALERT_DESCRIPTION_CERTIFICATE_UNOBTAINABLE = 111
ALERT_DESCRIPTION_UNRECOGNIZED_NAME = 112
ALERT_DESCRIPTION_BAD_CERTIFICATE_STATUS_RESPONSE = 113
ALERT_DESCRIPTION_BAD_CERTIFICATE_HASH_VALUE = 114
ALERT_DESCRIPTION_UNKNOWN_PSK_IDENTITY = 115


class SSLError(OSError):
    """An SSL error (here, always: there is no TLS in the sandbox)."""

    library = None
    reason = None

    def __str__(self):
        return self.strerror if self.strerror is not None else super().__str__()


class SSLZeroReturnError(SSLError):
    """SSL/TLS session closed cleanly."""


class SSLWantReadError(SSLError):
    """Non-blocking SSL socket needs to read more data."""


class SSLWantWriteError(SSLError):
    """Non-blocking SSL socket needs to write more data."""


class SSLSyscallError(SSLError):
    """System error when attempting SSL operation."""


class SSLEOFError(SSLError):
    """SSL/TLS connection terminated abruptly."""


class SSLCertVerificationError(SSLError, ValueError):
    """A certificate could not be verified."""

    verify_code = None
    verify_message = None


def _no_tls():
    err = SSLError(SSL_ERROR_SSL, NO_TLS)
    err.library = "wsgi-wasm"
    err.reason = "NO_TLS"
    return err


# The two OIDs `ssl.Purpose` is made of, as OpenSSL names them.
_OBJECTS = (
    (129, "serverAuth", "TLS Web Server Authentication", "1.3.6.1.5.5.7.3.1"),
    (130, "clientAuth", "TLS Web Client Authentication", "1.3.6.1.5.5.7.3.2"),
)


def txt2obj(txt, name=False):
    for obj in _OBJECTS:
        if txt == obj[3] or (name and txt in obj[1:3]):
            return obj
    raise ValueError(f"unknown object '{txt}'")


def nid2obj(nid):
    for obj in _OBJECTS:
        if nid == obj[0]:
            return obj
    raise ValueError(f"unknown NID {nid}")


def RAND_status():
    return True


def RAND_add(string, entropy):
    """Accepted and unused: the guest's randomness comes from the host."""


def RAND_bytes(n):
    if n < 0:
        raise ValueError("num must be positive")
    return _os.urandom(n)


def get_default_verify_paths():
    # No certificate store: `ssl.get_default_verify_paths()` reports None.
    return ("SSL_CERT_FILE", "", "SSL_CERT_DIR", "")


class MemoryBIO:
    """An in-memory buffer, as `ssl.SSLObject` reads and writes."""

    def __init__(self):
        self._buf = bytearray()
        self._eof = False

    @property
    def pending(self):
        return len(self._buf)

    @property
    def eof(self):
        return self._eof and not self._buf

    def read(self, size=-1):
        size = len(self._buf) if size < 0 else min(size, len(self._buf))
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def write(self, data):
        if self._eof:
            raise SSLError(SSL_ERROR_EOF, "cannot write() after write_eof()")
        data = memoryview(data).tobytes()
        self._buf += data
        return len(data)

    def write_eof(self):
        self._eof = True


class SSLSession:
    def __init__(self, *args, **kwargs):
        raise TypeError("cannot create 'SSLSession' instances")


class _SSLContext:
    """A context's settings, kept; a handshake, refused."""

    def __new__(cls, protocol, *args, **kwargs):
        if protocol not in (PROTOCOL_TLS, PROTOCOL_TLSv1, PROTOCOL_TLSv1_1, PROTOCOL_TLSv1_2,
                            PROTOCOL_TLS_CLIENT, PROTOCOL_TLS_SERVER):
            raise ValueError("invalid or unsupported protocol version %i" % protocol)
        self = object.__new__(cls)
        self._protocol = protocol
        client = protocol == PROTOCOL_TLS_CLIENT
        self._options = OP_ALL | OP_NO_SSLv2 | OP_NO_SSLv3 | OP_NO_COMPRESSION | OP_CIPHER_SERVER_PREFERENCE
        self._verify_mode = CERT_REQUIRED if client else CERT_NONE
        self._verify_flags = VERIFY_X509_TRUSTED_FIRST
        self._check_hostname = client
        self._host_flags = HOSTFLAG_NO_PARTIAL_WILDCARDS
        self._minimum_version = PROTO_MINIMUM_SUPPORTED
        self._maximum_version = PROTO_MAXIMUM_SUPPORTED
        self.post_handshake_auth = False
        self.sni_callback = None
        self.keylog_filename = None
        self.num_tickets = 2
        self._msg_cb = None
        return self

    def __init__(self, *args, **kwargs):
        pass

    protocol = property(lambda self: self._protocol)
    security_level = property(lambda self: 2)

    def _setter(name, check=None):
        def get(self):
            return getattr(self, name)

        def put(self, value):
            if check is not None:
                check(self, value)
            setattr(self, name, value)

        return property(get, put)

    def _check_verify_mode(self, value):
        if value not in (CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED):
            raise ValueError("invalid value for verify_mode")
        if value == CERT_NONE and self._check_hostname:
            raise ValueError("Cannot set verify_mode to CERT_NONE when check_hostname is enabled.")

    def _set_check_hostname(self, value):
        if value and self._verify_mode == CERT_NONE:
            self._verify_mode = CERT_REQUIRED

    options = _setter("_options")
    verify_mode = _setter("_verify_mode", _check_verify_mode)
    verify_flags = _setter("_verify_flags")
    check_hostname = _setter("_check_hostname", _set_check_hostname)
    minimum_version = _setter("_minimum_version")
    maximum_version = _setter("_maximum_version")
    # A property, as `ssl.SSLContext` sets it through `super()`.
    _msg_callback = _setter("_msg_cb")
    del _setter, _check_verify_mode, _set_check_hostname

    # Configuration: accepted, as a context is set up before it is used.
    def load_verify_locations(self, cafile=None, capath=None, cadata=None):
        if cafile is None and capath is None and cadata is None:
            raise TypeError("cafile, capath and cadata cannot be all omitted")

    def load_cert_chain(self, certfile, keyfile=None, password=None):
        pass

    def set_default_verify_paths(self):
        pass

    def set_ciphers(self, ciphers):
        pass

    def get_ciphers(self):
        return []

    def load_dh_params(self, path):
        pass

    def set_ecdh_curve(self, name):
        pass

    def _set_alpn_protocols(self, protos):
        pass

    def set_psk_client_callback(self, callback):
        pass

    def set_psk_server_callback(self, callback, identity_hint=None):
        pass

    def cert_store_stats(self):
        return {"x509": 0, "crl": 0, "x509_ca": 0}

    def get_ca_certs(self, binary_form=False):
        return []

    def session_stats(self):
        return {}

    # Where TLS would begin: refused.
    def _wrap_socket(self, sock, server_side, server_hostname=None, *, owner=None, session=None):
        raise _no_tls()

    def _wrap_bio(self, incoming, outgoing, server_side, server_hostname=None, *, owner=None, session=None):
        raise _no_tls()
