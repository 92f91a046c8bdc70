"""``wsgi.errors``: a text stream whose lines land in the host's server log.

Each complete line is one log record on the host, tagged with the request id.
A partial line is held until its newline arrives, ``flush()`` is called, or the
request ends. A single line is cut at ``MAX_LINE`` characters so a runaway
writer cannot make the guest hold an unbounded buffer.
"""

from wit_world.imports import log

MAX_LINE = 16 * 1024


class ErrorStream:
    def __init__(self):
        self._pending = ""

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"wsgi.errors.write() takes str, not {type(s).__name__}")
        data = self._pending + s
        *lines, self._pending = data.split("\n")
        for line in lines:
            self._emit(line)
        while len(self._pending) > MAX_LINE:
            self._emit(self._pending[:MAX_LINE])
            self._pending = self._pending[MAX_LINE:]
        return len(s)

    def writelines(self, seq):
        for s in seq:
            self.write(s)

    def flush(self):
        if self._pending:
            self._emit(self._pending)
            self._pending = ""

    def _emit(self, line):
        log.log_error(line[:MAX_LINE])

    def writable(self):
        return True
