"""wsgi-wasm guest SDK: runs a WSGI app inside a wsgi-wasm component.

- ``adapter``: the PEP 3333 server side (environ, start_response, body loop).
- ``input`` / ``errors``: ``wsgi.input`` and ``wsgi.errors``.
- ``build``: what runs once at build time, inside the guest, before the snapshot.
- ``network``: no network at build time; refusals that name the missing grant.
"""
