"""``wsgi.input``: the request body, pulled from the host on demand.

Nothing is read before the app asks for it, and at most one buffer's worth
(plus whatever the app asked for) is ever held in the guest, so a 1 GiB upload
streams through a handler that reads it in pieces. The host ends the body at
its real end (Content-Length or the last chunk), and this class additionally
never asks for more than Content-Length, so a read can never run past the body.
"""

from componentize_py_types import Err
from wit_world.imports import host

#: How much one call to the host asks for when the app reads "everything".
CHUNK = 64 * 1024


class ClientDisconnected(OSError):
    """The client went away, or its body was malformed, while the app read it."""


class Input:
    """A read-only binary stream over the request body (PEP 3333 ``wsgi.input``)."""

    def __init__(self, content_length):
        # Bytes the host may still deliver, or None for "until the host says EOF"
        # (a chunked request).
        self._remaining = content_length
        self._buf = bytearray()
        self._eof = content_length == 0

    # -- the host side -----------------------------------------------------

    def _fetch(self, want):
        """Up to ``want`` more bytes from the host; empty at the end."""
        if self._eof:
            return b""
        if self._remaining is not None:
            want = min(want, self._remaining)
        try:
            data = host.read_body(max(1, min(want, 1 << 30)))
        except Err as e:
            self._eof = True
            raise ClientDisconnected(f"request body: {e.value}") from None
        if not data:
            self._eof = True
            return b""
        if self._remaining is not None:
            self._remaining -= len(data)
            if self._remaining <= 0:
                self._eof = True
        return data

    def _pull(self, want):
        """Appends up to ``want`` more bytes to the buffer; False at the end."""
        data = self._fetch(want)
        self._buf += data
        return bool(data)

    def _take(self, n):
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    # -- the WSGI side ------------------------------------------------------

    def read(self, size=-1):
        if size is None or size < 0:
            size = None
        if not self._buf:
            return self._read_unbuffered(size)
        if size is None:
            while self._pull(CHUNK):
                pass
            return self._take(len(self._buf))
        while len(self._buf) < size and self._pull(size - len(self._buf)):
            pass
        return self._take(size)

    def _read_unbuffered(self, size):
        """``read`` with nothing buffered: the host's chunks, joined once.

        A body that arrives in one chunk is returned as the host delivered
        it; otherwise each byte is copied once, not into the buffer and then
        out of it again.
        """
        parts = []
        got = 0
        while size is None or got < size:
            data = self._fetch(CHUNK if size is None else size - got)
            if not data:
                break
            parts.append(data)
            got += len(data)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def readline(self, size=-1):
        limit = None if size is None or size < 0 else size
        scanned = 0
        while True:
            nl = self._buf.find(b"\n", scanned)
            if nl >= 0:
                end = nl + 1
                break
            scanned = len(self._buf)
            if limit is not None and scanned >= limit:
                end = limit
                break
            want = CHUNK if limit is None else min(CHUNK, limit - scanned)
            if not self._pull(want):
                end = len(self._buf)
                break
        if limit is not None:
            end = min(end, limit)
        return self._take(end)

    def readlines(self, hint=-1):
        lines, total = [], 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def readable(self):
        return True

    def close(self):
        pass
