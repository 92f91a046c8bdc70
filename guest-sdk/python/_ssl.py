"""The guest's ``_ssl``: TLS for the standard ``ssl`` module, run by the host.

CPython for WASI is built without OpenSSL, so it has no ``_ssl``. This module
stands in for the C extension, so that the real ``ssl.py`` of the standard
library, and every client built on it (``http.client``, urllib3 and
requests, pg8000, redis-py, PyMySQL, ``smtplib``), works unchanged.

A TLS session is the host's (``wsgi-wasm:guest/tls``, rustls), sans-IO as
``ssl.SSLObject`` over a ``MemoryBIO``: this module moves the ciphertext
between the session and the socket (``wrap_socket``) or the BIOs
(``wrap_bio``), so a connected socket can be upgraded (STARTTLS). The
connection is one the operator's grants already allowed.

The host verifies every peer, its certificate chain against the system's
roots and the operator's (``--outbound-ca``), and the certificate against
the server name (or the peer's address, if the app gives no name). Nothing
an app sets turns that off or widens it: ``CERT_NONE``,
``check_hostname = False``, ``_create_unverified_context()`` and an app's
own ``load_verify_locations`` are accepted and change nothing. A
certificate that does not verify raises ``ssl.SSLCertVerificationError``,
with OpenSSL's verify code and words for why.

The constants have OpenSSL 3's values, so that code which compares or
combines them behaves as with a real build. TLS 1.2 and 1.3 only; no server
side.
"""

import os as _os
import socket as _socket

from componentize_py_types import Err as _Err
from wit_world.imports import tls as _tls

OPENSSL_VERSION = "rustls 0.23 (TLS run by the wsgi-wasm host)"
OPENSSL_VERSION_INFO = (3, 0, 0, 0, 0)
OPENSSL_VERSION_NUMBER = 0x30000000
_OPENSSL_API_VERSION = (3, 0, 0, 0, 0)
_DEFAULT_CIPHERS = "@SECLEVEL=2:ECDH+AESGCM:ECDH+CHACHA20:ECDH+AES:DHE+AES:!aNULL:!eNULL:!aDSS:!SHA1:!AESCCM"

# What the host's TLS (rustls) does: TLS 1.2 and 1.3, SNI, ALPN, ECDH.
HAS_SNI = HAS_ECDH = HAS_ALPN = True
HAS_TLSv1_2 = HAS_TLSv1_3 = True
HAS_NPN = HAS_SSLv2 = HAS_SSLv3 = HAS_TLSv1 = HAS_TLSv1_1 = False
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
    """An SSL error."""

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


def _error(cls, code, reason, words):
    err = cls(code, f"[SSL: {reason}] {words}" if reason else words)
    err.library = "SSL"
    err.reason = reason
    return err


def _tls_error(err):
    """The host's `tls-error` as the exception CPython's `_ssl` raises."""
    kind, value = type(err).__name__, err.value
    if kind == "TlsError_Certificate":
        code, words = value
        exc = _error(
            SSLCertVerificationError, SSL_ERROR_SSL, "CERTIFICATE_VERIFY_FAILED", f"certificate verify failed: {words}"
        )
        exc.verify_code = code
        exc.verify_message = words
        return exc
    if kind == "TlsError_Protocol" and value.startswith("EOF occurred"):
        return _error(SSLEOFError, SSL_ERROR_EOF, None, value)
    if kind == "TlsError_Protocol":
        return _error(SSLError, SSL_ERROR_SSL, "PROTOCOL_ERROR", value)
    return _error(SSLError, SSL_ERROR_SSL, "REFUSED", value)


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
    # The trust store is the host's: `ssl.get_default_verify_paths()`
    # reports no file or directory in the guest.
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
    """A context's settings. Those about verification are kept, and change
    nothing: the host verifies every peer (see the module docs)."""

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
        self._alpn = []
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

    # Configuration: accepted, as a context is set up before it is used. The
    # app's own roots do not change whom the host trusts.
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
        # The wire format `ssl.SSLContext.set_alpn_protocols` builds: each
        # name after its length byte.
        protos, names = bytes(protos), []
        while protos:
            names.append(protos[1 : 1 + protos[0]].decode("ascii"))
            protos = protos[1 + protos[0] :]
        self._alpn = names

    def _versions(self):
        """The TLS versions the context allows, as the host takes them."""
        lo = PROTO_TLSv1_2 if self._minimum_version < PROTO_TLSv1_2 else self._minimum_version
        hi = PROTO_TLSv1_3 if self._maximum_version < 0 else self._maximum_version
        return lo, hi

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

    def _wrap_socket(self, sock, server_side, server_hostname=None, *, owner=None, session=None):
        return _SSLSocket(self, server_side, server_hostname, owner, sock=sock)

    def _wrap_bio(self, incoming, outgoing, server_side, server_hostname=None, *, owner=None, session=None):
        return _SSLSocket(self, server_side, server_hostname, owner, bios=(incoming, outgoing))


# A `name-entry` list as `getpeercert()` gives names: a tuple of RDNs, each
# a tuple of one (key, value) pair.
def _rdns(entries):
    return tuple(((e.key, e.value),) for e in entries)


class _SSLSocket:
    """What `_SSLContext._wrap_socket` and `_wrap_bio` return (the C
    `_ssl._SSLSocket`): a session in the host, its ciphertext moved over the
    socket, or through the two BIOs."""

    session = None
    session_reused = False

    def __init__(self, context, server_side, server_hostname, owner, sock=None, bios=None):
        if server_side:
            raise _error(SSLError, SSL_ERROR_SSL, "NO_SERVER", "wsgi-wasm: a sandbox cannot be a TLS server")
        self._context = context
        self.server_side = False
        self.server_hostname = server_hostname
        self.owner = owner
        self._sock = sock
        self._bios = bios
        # Plaintext received and not yet read; ciphertext not yet sent.
        self._plain = bytearray()
        self._outgoing = bytearray()
        name = server_hostname
        if not name and sock is not None:
            # No name to check the certificate against: the peer's address.
            name = _socket.socket.getpeername(sock)[0]
        if not name:
            raise ValueError("check_hostname requires server_hostname")
        lo, hi = context._versions()
        try:
            self._session = _tls.Session.open(name, context._alpn, lo, hi)
        except _Err as e:
            raise _tls_error(e.value) from None

    context = property(lambda self: self._context, lambda self, ctx: setattr(self, "_context", ctx))

    def _call(self, method, *args):
        """A method of the host's session; what it refuses, raised as CPython
        would, after the alert it queued has gone to the peer."""
        try:
            return getattr(self._session, method)(*args)
        except _Err as e:
            try:
                self._flush()
            except OSError:
                pass
            raise _tls_error(e.value) from None

    def _flush(self):
        """Sends the ciphertext the session has for the peer."""
        self._outgoing += self._session.transmit()
        if self._bios is not None:
            self._bios[1].write(bytes(self._outgoing))
            self._outgoing.clear()
            return
        while self._outgoing:
            try:
                sent = _socket.socket.send(self._sock, self._outgoing)
            except BlockingIOError:
                raise _error(SSLWantWriteError, SSL_ERROR_WANT_WRITE, None, "The operation did not complete (write)")
            del self._outgoing[:sent]

    def _fill(self):
        """Hands the session the ciphertext that arrived; waits for some on
        a blocking socket (within its timeout)."""
        if self._bios is not None:
            incoming = self._bios[0]
            data = incoming.read(16384)
            if not data and not incoming.eof:
                raise _error(SSLWantReadError, SSL_ERROR_WANT_READ, None, "The operation did not complete (read)")
        else:
            try:
                data = _socket.socket.recv(self._sock, 16384)
            except BlockingIOError:
                raise _error(SSLWantReadError, SSL_ERROR_WANT_READ, None, "The operation did not complete (read)")
        self._call("receive", data)

    def do_handshake(self):
        while True:
            self._flush()
            if not self._session.handshaking():
                return
            self._fill()

    def read(self, len=1024, buffer=None):
        if len < 0:
            raise ValueError("size should not be negative")
        if buffer is not None and len == 0:
            len = memoryview(buffer).nbytes
        while not self._plain and len:
            if self._session.handshaking():
                self.do_handshake()
            received = self._call("read", 65536)
            if received.data:
                self._plain += received.data
                break
            if received.closed:
                break
            self._flush()
            self._fill()
        data = bytes(self._plain[:len])
        del self._plain[: builtins_len(data)]
        if buffer is None:
            return data
        memoryview(buffer)[: builtins_len(data)] = data
        return builtins_len(data)

    def write(self, data):
        """Sends `data`, in pieces of what the session's buffer takes. On a
        non-blocking socket that cannot take more, returns how much was
        taken (its ciphertext goes first on the next call), as `send` may."""
        if self._session.handshaking():
            self.do_handshake()
        view = memoryview(data).cast("B")
        taken = 0
        while True:
            if taken < builtins_len(view):
                taken += self._call("write", bytes(view[taken : taken + 65536]))
            try:
                self._flush()
            except SSLWantWriteError:
                if taken:
                    return taken
                raise
            if taken == builtins_len(view):
                return taken

    def pending(self):
        return builtins_len(self._plain)

    def _info(self):
        info = self._session.info()
        if info is None:
            raise ValueError("handshake not done yet")
        return info

    def getpeercert(self, binary_form=False):
        info = self._info()
        if not info.peer:
            return None
        cert = info.peer[0]
        if binary_form:
            return bytes(cert.der)
        return {
            "subject": _rdns(cert.subject),
            "issuer": _rdns(cert.issuer),
            "version": cert.version,
            "serialNumber": cert.serial_number,
            "notBefore": cert.not_before,
            "notAfter": cert.not_after,
            "subjectAltName": tuple((e.key, e.value) for e in cert.subject_alt_name),
        }

    def get_verified_chain(self):
        return [bytes(cert.der) for cert in self._info().peer]

    get_unverified_chain = get_verified_chain

    def cipher(self):
        info = self._session.info()
        return None if info is None else (info.cipher, info.version, info.bits)

    def shared_ciphers(self):
        return None

    def version(self):
        info = self._session.info()
        return None if info is None else info.version

    def selected_alpn_protocol(self):
        info = self._session.info()
        return None if info is None else info.alpn

    def selected_npn_protocol(self):
        return None

    def compression(self):
        return None

    def get_channel_binding(self, cb_type="tls-unique"):
        if cb_type != "tls-unique":
            raise ValueError(f"{cb_type!r} channel binding type not implemented")
        return None

    def verify_client_post_handshake(self):
        raise _error(SSLError, SSL_ERROR_SSL, "NO_SERVER", "wsgi-wasm: a sandbox cannot be a TLS server")

    def shutdown(self):
        self._session.close()
        try:
            self._flush()
        except OSError:
            pass
        return self._sock


builtins_len = len
