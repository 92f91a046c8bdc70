"""The guest's side of the network: none while the app is built, and errors
that name the missing grant when a request is refused a connection.

While ``wsgi-wasm build`` imports the app and runs its warm-up requests, any
lookup or connection fails at once with a clear ``OSError``. A real one is
not possible then (the build has no network), and even a failed attempt
would leave the guest's libc holding a handle to the build's network, which
no request's sandbox has: every request's first socket call would then trap.

At request time the host's grants (``--allow-outbound``) decide. A refusal
reaches the app as ``PermissionError`` (a connection) or ``socket.gaierror``
(a name lookup) whose message names the grant that is missing. A grant is
for TCP connections only: binding a socket (to listen) and UDP are always
refused, and the error says so.

The wrappers stay installed (a library may keep a reference to
``socket.getaddrinfo`` from its import); only ``_building`` changes.
"""

import contextlib
import errno
import functools
import socket

_building = False

# What reaches the guest's libc network code, as module functions and as
# socket methods.
_LOOKUPS = ("getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "getnameinfo")
_METHODS = ("connect", "connect_ex", "bind", "listen", "sendto")


def _refuse_while_building():
    if _building:
        raise OSError(
            errno.ENETUNREACH,
            "wsgi-wasm: there is no network while the app is built (at import or in a warm-up "
            "request); open connections when a request needs them",
        )


def _where(host, port):
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _guard(fn):
    @functools.wraps(fn)
    def guarded(*args, **kwargs):
        _refuse_while_building()
        return fn(*args, **kwargs)

    return guarded


_NO_UDP = "wsgi-wasm: a sandbox has no UDP; a grant is for TCP connections only"


def _connect(connect):
    @functools.wraps(connect)
    def connect_granted(self, address):
        _refuse_while_building()
        try:
            return connect(self, address)
        except PermissionError as e:
            if self.type == socket.SOCK_DGRAM:
                raise PermissionError(e.errno, _NO_UDP) from None
            where = _where(address[0], address[1])
            raise PermissionError(
                e.errno,
                f"wsgi-wasm: the connection to {where} is not granted; "
                f"the operator can allow it with --allow-outbound {where}",
            ) from None

    return connect_granted


def _refused_as(message, at_build=True):
    """Wraps a call that the host always refuses, so that it says why (and,
    with `at_build`, refuses it while the app is built)."""

    def wrap(fn):
        @functools.wraps(fn)
        def refused(*args, **kwargs):
            if at_build:
                _refuse_while_building()
            try:
                return fn(*args, **kwargs)
            except PermissionError as e:
                raise PermissionError(e.errno, message) from None

        return refused

    return wrap


def _getaddrinfo(getaddrinfo):
    @functools.wraps(getaddrinfo)
    def getaddrinfo_granted(host, port, *args, **kwargs):
        _refuse_while_building()
        try:
            return getaddrinfo(host, port, *args, **kwargs)
        except socket.gaierror as e:
            # The host answers a name no grant names with a resolver failure.
            if e.errno != socket.EAI_FAIL:
                raise
            raise socket.gaierror(
                e.errno,
                f"wsgi-wasm: looking up {host!r} is not granted; "
                f"the operator can allow it with --allow-outbound {_where(host, port or 'PORT')}",
            ) from None

    return getaddrinfo_granted


def install():
    """Wraps the socket module's network calls; once, at build time."""
    for name in _LOOKUPS:
        wrap = _getaddrinfo if name == "getaddrinfo" else _guard
        setattr(socket, name, wrap(getattr(socket, name)))
    # A UDP socket is refused as it is made. Making one touches no network,
    # so it is allowed while the app is built, as before.
    socket.socket.__init__ = _refused_as(_NO_UDP, at_build=False)(socket.socket.__init__)
    no_listening = _refused_as("wsgi-wasm: a sandbox cannot listen for connections")
    wraps = {"connect": _connect, "bind": no_listening, "listen": no_listening, "sendto": _refused_as(_NO_UDP)}
    for name in _METHODS:
        setattr(socket.socket, name, wraps.get(name, _guard)(getattr(socket.socket, name)))


@contextlib.contextmanager
def forbidden():
    """No lookup and no connection while the body runs."""
    global _building
    _building = True
    try:
        yield
    finally:
        _building = False
