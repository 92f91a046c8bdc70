"""The build-time half of the SDK: runs once, inside the guest, at pre-init.

``componentize-py`` imports the entry module once while it snapshots the
interpreter, with the stdlib, the app and its dependencies mounted as
directories (``/python``, ``/0``, ``/1``, ...). Whatever is imported then is in
the snapshot; anything else must be importable later, at request time. So this
module, in that single run:

1. imports the app and checks that the named object is a WSGI callable;
2. imports every dependency that ships native code, to prove it has a
   pure-Python fallback (a clear build error names the package if not);
3. runs the automatic warm-up (a GET and a HEAD of a path that 404s;
   where Django is configured, its URL resolver, its default language's
   catalogs and formats and its context processors; and every template
   Django or Jinja can list, compiled), the ``--warmup`` requests, the
   adapter's own request path and the runtime's reseeding of ``random``, a
   few times each, so that their first-request work is in the snapshot;
4. copies every mounted directory into the export directory, with bytecode
   compiled for this exact interpreter, so the host can ship the tree inside
   ``app.wasm`` and mount it read-only at the same paths for every request;
5. shapes the heap so that requests write to few snapshot pages: lists every
   live object for the host to make immortal, and fills the free holes;
6. returns the ``WitWorld`` class that componentize-py exports.

Steps 1 to 3 run with the network forbidden (``network.forbidden``), in the
environment ``--env`` and ``--env-file`` give the build and nothing else,
and the names of the variables the app reads then are reported
(``_BuildEnvironment``): their build-time values are what it keeps.

Errors are reported as one ``WSGI_WASM_BUILD_ERROR <json string>`` line on
stderr, which ``wsgi-wasm build`` turns into its own error message.
"""

import gc
import importlib
import inspect
import json
import os
import py_compile
import shutil
import sys
import traceback
import types

import wit_world

from . import adapter, kdf, network, posix

PLAN_FILE = "wsgi_wasm_plan.json"
REPORT_FILE = "wsgi_wasm_report.json"
# Where the snapshot's object headers are listed for the host (see _record_heap).
HEAP_FILE = "wsgi_wasm_heap.bin"
MARKER = "WSGI_WASM_BUILD_ERROR"
# Each warm-up request runs this many times: CPython specializes bytecode
# only after a few executions, and specializing writes to the code object,
# which in a fresh instance means copying its page.
WARMUP_ROUNDS = 4
# Parts of the stdlib that cannot work in a WASI sandbox or serve no request.
STDLIB_SKIP = frozenset(
    ("idlelib", "tkinter", "turtledemo", "ensurepip", "test", "site-packages", "__phello__")
)


class BuildError(Exception):
    pass


def _fail(message):
    sys.stderr.write(f"{MARKER} {json.dumps(message)}\n")
    sys.stderr.flush()
    raise BuildError(message)


def _load_plan():
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(here, PLAN_FILE)) as f:
        return json.load(f)


def _native_culprit(plan, exc):
    """The native-code distribution an import failure comes from, if any."""
    missing = getattr(exc, "name", None) or ""
    for dist in plan["native"]:
        for module in dist["modules"]:
            if missing == module or missing.startswith(module + "."):
                return dist
    return None


def _native_message(dist, exc):
    files = ", ".join(dist["files"][:3])
    return (
        f"package {dist['name']} {dist['version']} ships native code ({files}) and has no "
        f"pure-Python fallback that works in WebAssembly: {type(exc).__name__}: {exc}. "
        "Only pure-Python packages (or ones that fall back to pure Python) can run in the sandbox."
    )


def _import_app(plan):
    module_name, attr = plan["module"], plan["callable"]
    target = f"{module_name}:{attr}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name or module_name.startswith(f"{e.name}."):
            _fail(
                f"cannot find module {module_name!r} for {target}: looked in "
                + ", ".join(plan["app_paths"])
                + " (set --path to the directory that holds it)"
            )
        dist = _native_culprit(plan, e)
        if dist:
            _fail(_native_message(dist, e))
        _fail(f"importing {module_name!r} failed:\n{traceback.format_exc()}")
    except BaseException as e:  # noqa: BLE001 - any failure of user code is a build error
        dist = _native_culprit(plan, e)
        if dist:
            _fail(_native_message(dist, e))
        _fail(f"importing {module_name!r} failed:\n{traceback.format_exc()}")

    factory = attr.endswith("()")
    obj = module
    for part in attr.removesuffix("()").split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            _fail(f"module {module_name!r} has no attribute {part!r} (looking for {target})")
    if factory:
        try:
            obj = obj()
        except BaseException:  # noqa: BLE001
            _fail(f"calling the app factory {target} failed:\n{traceback.format_exc()}")

    if not callable(obj):
        _fail(
            f"{target} is not callable (it is a {type(obj).__name__} object), so it is not "
            "a WSGI application: it must be callable as app(environ, start_response)"
        )
    try:
        inspect.signature(obj).bind({}, lambda *a: None)
    except TypeError as e:
        _fail(
            f"{target} is not a WSGI application: it cannot be called as "
            f"app(environ, start_response) ({e})"
        )
    except ValueError:
        pass  # no signature to inspect (a builtin); trust it
    return obj


def _probe_native(plan):
    for dist in plan["native"]:
        for module in dist["modules"]:
            try:
                importlib.import_module(module)
            except BaseException as e:  # noqa: BLE001
                _fail(_native_message(dist, e))


class _LocalErrors:
    """``wsgi.errors`` during warm-up, when host calls are not available yet."""

    def write(self, s):
        sys.stderr.write(s)

    def writelines(self, seq):
        sys.stderr.writelines(seq)

    def flush(self):
        sys.stderr.flush()


def _warm_up(app, plan):
    """Runs the plan's warm-up requests through the app, before the snapshot.

    The automatic ones come first; one that raises is reported as a warning
    and the build goes on. A ``--warmup`` request that raises fails it.
    """
    from urllib.parse import unquote_to_bytes

    report = []
    requests = [(m, t, True) for m, t in plan.get("auto_warmup", [])]
    requests += [(m, t, False) for m, t in plan.get("warmup", [])]
    for method, target, automatic in requests:
        path, _, query = target.partition("?")
        environ = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "REQUEST_URI": target,
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "localhost",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": adapter.Input(0),
            "wsgi.input_terminated": True,
            "wsgi.errors": _LocalErrors(),
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": True,
            "wsgi.file_wrapper": adapter.FileWrapper,
        }
        status = []

        def start_response(s, headers, exc_info=None):
            status[:] = [s]
            # Checked now, so that requests sending the same skip the checks.
            adapter.learn(s, headers)
            return lambda data: None

        try:
            for _ in range(WARMUP_ROUNDS):
                environ["wsgi.input"] = adapter.Input(0)
                result = app(dict(environ), start_response)
                try:
                    for _ in result:
                        pass
                finally:
                    if hasattr(result, "close"):
                        result.close()
        except Exception as e:  # noqa: BLE001
            if not automatic:
                _fail(f"the warm-up request {method} {target} failed:\n{traceback.format_exc()}")
            warning = traceback.format_exception_only(e)[-1].strip()
            report.append({"request": f"{method} {target}", "automatic": True, "warning": warning})
            continue
        except BaseException:  # noqa: BLE001
            _fail(f"the warm-up request {method} {target} failed:\n{traceback.format_exc()}")
        report.append({"request": f"{method} {target}", "automatic": automatic, "status": status[0] if status else None})
    if plan.get("auto_warmup"):
        report.extend(_warm_frameworks(app))
    return report


def _warm_frameworks(app):
    """Framework setup that public API offers and a first request would do,
    nothing an app must ask for:

    - Django's URL resolver imports the URLconf and every view module it
      names (Django loads them lazily, by dotted path);
    - Django's default language: its message catalogs and formats;
    - the context processors of each Django template engine;
    - every template Django or Jinja (Flask's ``app.jinja_env``, Django's
      Jinja2 backend) can list is compiled into the engine's cache, as its
      first render would do in every fresh instance. A template that does
      not compile is counted, and left to fail when it is rendered.
    """
    done = []

    def attempt(what, step):
        try:
            done.append({"request": what, "automatic": True, "status": step()})
        except Exception as e:  # noqa: BLE001
            warning = traceback.format_exception_only(e)[-1].strip()
            done.append({"request": what, "automatic": True, "warning": warning})

    django = "django" in sys.modules and _django_configured()
    if django:
        attempt("Django URL resolver", _django_urls)
        attempt("Django translations and formats", _django_locale)
        attempt("Django time zone", _django_timezone)
        attempt("Django templates", _django_templates)
    jinja = getattr(app, "jinja_env", None)
    if jinja is not None and hasattr(jinja, "list_templates"):
        attempt("Jinja templates", lambda: _compile_all(jinja.list_templates(), jinja.get_template))
    return done


def _django_configured():
    try:
        from django.conf import settings

        return settings.configured
    except Exception:  # noqa: BLE001
        return False


def _django_urls():
    from django.urls import get_resolver

    return f"{len(get_resolver().url_patterns)} patterns"


def _django_locale():
    """The default language's message catalogs and number and date formats,
    which Django reads from its tree (``.mo`` files, format modules) on
    their first use and keeps in module-level caches."""
    from django.conf import settings
    from django.utils import formats, translation

    translation.gettext("")
    for name in ("DECIMAL_SEPARATOR", "THOUSAND_SEPARATOR", "NUMBER_GROUPING", "DATE_FORMAT", "DATETIME_FORMAT"):
        formats.get_format(name)
    return settings.LANGUAGE_CODE if settings.USE_I18N else "i18n off"


def _django_timezone():
    """The default time zone, which Django loads (from ``tzdata``, bundled
    unless the app brings its own) and caches on first use with ``USE_TZ``."""
    from django.conf import settings
    from django.utils import timezone

    return str(timezone.get_default_timezone()) if settings.USE_TZ else "USE_TZ off"


def _django_templates():
    from django.template import engines

    counts = []
    for backend in engines.all():
        env = getattr(backend, "env", None)  # the Jinja2 backend
        if env is not None and hasattr(env, "list_templates"):
            counts.append(_compile_all(env.list_templates(), env.get_template))
        elif hasattr(backend, "engine"):  # DjangoTemplates
            # Imports the context processors, which the first render with a
            # request (RequestContext) would import.
            backend.engine.template_context_processors
            names = sorted(set(_django_template_names(backend.engine.template_loaders)))
            counts.append(_compile_all(names, backend.get_template))
    return "; ".join(counts) or "no engine"


def _django_template_names(loaders):
    """The names every loader can find: a cached loader's own loaders, a
    locmem loader's dict, and the files under a loader's directories."""
    for loader in loaders:
        if hasattr(loader, "loaders"):
            yield from _django_template_names(loader.loaders)
        if isinstance(getattr(loader, "templates_dict", None), dict):
            yield from loader.templates_dict
        get_dirs = getattr(loader, "get_dirs", None)
        for root in get_dirs() if get_dirs else ():
            root = os.fspath(root)
            for parent, _dirs, files in os.walk(root):
                for name in files:
                    yield os.path.relpath(os.path.join(parent, name), root).replace(os.sep, "/")


def _compile_all(names, get_template):
    compiled = failed = 0
    for name in names:
        try:
            get_template(name)
            compiled += 1
        except Exception:  # noqa: BLE001
            failed += 1
    return f"{compiled} compiled" + (f", {failed} did not compile" if failed else "")


class _StandInHost:
    """The host imports, for running the adapter before there is a host."""

    Header = adapter.host.Header

    @staticmethod
    def start_response(status, headers, body, complete):
        pass

    @staticmethod
    def write_body(data):
        pass


def _warm_adapter():
    """Runs the adapter's own per-request path, before the snapshot.

    Every request goes through ``adapter.handle``; run at build time (with a
    stand-in app and host), its bytecode is specialized in the snapshot
    instead of in every fresh instance. No app code runs.
    """

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    cgi = [
        ("REQUEST_METHOD", "GET"),
        ("SCRIPT_NAME", ""),
        ("PATH_INFO", "/"),
        ("QUERY_STRING", ""),
        ("SERVER_NAME", "localhost"),
        ("SERVER_PORT", "80"),
        ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("REMOTE_ADDR", "127.0.0.1"),
        ("HTTP_HOST", "localhost"),
    ]
    real = adapter.host
    adapter.host = _StandInHost
    try:
        for _ in range(WARMUP_ROUNDS):
            adapter.handle(app, "http", cgi, [])
    finally:
        adapter.host = real


def _warm_reseed():
    """Imports ``random`` and runs ``random.seed()``, before the heap is shaped.

    componentize-py's runtime imports ``random`` only after the entry module
    returns, that is after ``prepare`` listed the objects to make immortal,
    and it calls ``random.seed()`` once in every instance, on its first call,
    so that instances do not share the snapshot's generator state. Left to
    the runtime, that one call in a fresh instance wrote about 50 pages more
    than it does after this (hello world: 155 pages copied back per request,
    139 with only the import here, 102 with the calls too). The state left
    here is reseeded in every instance anyway.
    """
    import random

    for _ in range(WARMUP_ROUNDS):
        random.seed()


def _import_bindings():
    """Imports the bindings of every host interface, before the heap is
    shaped. componentize-py's runtime imports them after the entry module
    otherwise, freeing memory below the snapshot's objects: with the `kdf`
    interface left to it, a request's objects landed on 31 to 35 snapshot
    pages instead of 6 or 7
    (`what_a_request_allocates_lands_above_the_snapshot_objects`)."""
    import pkgutil

    import wit_world.imports

    for module in pkgutil.iter_modules(wit_world.imports.__path__):
        importlib.import_module(f"wit_world.imports.{module.name}")


def _mounted_roots(skip):
    roots = []
    for entry in sys.path:
        if entry.count("/") == 1 and entry not in skip and os.path.isdir(entry):
            roots.append(entry)
    return roots


def _skip_dir(parent, name):
    """Directories that are never part of an app: caches, VCS, virtualenvs."""
    return (
        name == "__pycache__"
        or name.startswith(".")
        or name == "node_modules"
        or os.path.exists(os.path.join(parent, name, "pyvenv.cfg"))
    )


def _export_tree(export_dir, roots):
    tag = sys.implementation.cache_tag
    for root in roots:
        dest_root = os.path.join(export_dir, root.lstrip("/"))
        for dirpath, dirnames, filenames in os.walk(root):
            rel = os.path.relpath(dirpath, root)
            dirnames[:] = sorted(
                d
                for d in dirnames
                if not _skip_dir(dirpath, d) and not (root == "/python" and rel == "." and d in STDLIB_SKIP)
            )
            dest = os.path.normpath(os.path.join(dest_root, rel))
            os.makedirs(dest, exist_ok=True)
            for name in filenames:
                # Host-built native modules cannot load here, stale bytecode
                # from the host's Python is for another interpreter, and a
                # component (an earlier build's output next to the app)
                # would nest one build inside the next.
                if name.endswith((".so", ".pyd", ".pyc", ".dylib", ".wasm", ".wasm.partial")) or name == PLAN_FILE:
                    continue
                src = os.path.join(dirpath, name)
                shutil.copyfile(src, os.path.join(dest, name))
                if name.endswith(".py"):
                    stem = name[:-3]
                    try:
                        py_compile.compile(
                            src,
                            cfile=os.path.join(dest, "__pycache__", f"{stem}.{tag}.pyc"),
                            dfile=src,
                            doraise=True,
                            invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                        )
                    except py_compile.PyCompileError:
                        pass  # not importable as source either; ship it as it is


class _RecordingEnviron(os._Environ):
    """``os.environ`` while the app is built: it notes what is read."""

    def __getitem__(self, key):
        # `get`, `in`, `setdefault` and `os.getenv` all come through here.
        # The interpreter's own knobs (PYTHONTZPATH, _PYTHON_HOST_PLATFORM,
        # which the stdlib looks up) are not the app's settings.
        if not str(key).lstrip("_").startswith("PYTHON"):
            _BuildEnvironment.read.add(key)
        return super().__getitem__(key)

    def __iter__(self):
        # `dict(os.environ)`, `.items()`, `.copy()`: every value is read.
        _BuildEnvironment.iterated = True
        return super().__iter__()


class _BuildEnvironment:
    """The environment the app is imported and warmed up in: exactly the
    build's ``--env`` (nothing of the build machine's), with every variable
    the app reads noted, for the build to report and ``run`` to warn about."""

    read = set()
    iterated = False

    def __init__(self, pairs):
        self.pairs = pairs

    def __enter__(self):
        os.environ.clear()
        os.environ.update(self.pairs)
        os.environ.__class__ = _RecordingEnviron
        return self

    def __exit__(self, *exc):
        os.environ.__class__ = os._Environ


def prepare():
    """Everything the entry module does at pre-init; returns the WitWorld class."""
    plan = _load_plan()
    posix.install()
    network.install()
    # hashlib's OpenSSL-only functions, computed by the host (see `kdf`);
    # there is no host while the app is built.
    kdf.install()
    kdf.building = True
    # No network while the app is built: see `network`.
    with network.forbidden():
        with _BuildEnvironment(plan.get("env", [])):
            app = _import_app(plan)
            _probe_native(plan)
            warmed = _warm_up(app, plan)
        _warm_adapter()
        _warm_reseed()
    kdf.building = False
    _import_bindings()
    export_dir = plan["export_dir"]
    _export_tree(export_dir, _mounted_roots({export_dir}))
    # Read (and removed) by `wsgi-wasm build`, which has no other channel
    # back from a successful pre-init.
    with open(os.path.join(export_dir, REPORT_FILE), "w") as f:
        json.dump(
            {
                "warmup": warmed,
                "env_read": sorted(_BuildEnvironment.read),
                "env_iterated": _BuildEnvironment.iterated,
            },
            f,
        )

    class WitWorld(wit_world.WitWorld):
        def handle(self, url_scheme, environ, env):
            adapter.handle(app, url_scheme, environ, env)

    # The build's environment (PYTHONPATH, the app name, ...) must not reach
    # requests: they see only what the operator grants with --env.
    os.environ.clear()

    # The interpreter's type attribute cache holds a reference to each name
    # it caches. A name that only it holds (a string made at run time, with
    # a count of 1 and so not made immortal) is freed when a request's
    # lookup replaces its entry, and its memory reused: writes scattered
    # over the snapshot, each a page to copy back after the request. Emptied
    # now, those names are freed here, and their holes filled below; each
    # request's own lookups refill the cache. A Flask request copied back a
    # third fewer pages (docs/performance.md).
    sys._clear_internal_caches()
    # Everything alive now is in the snapshot and shared, copy-on-write, by
    # every instance. Move it out of the cyclic GC's sight: otherwise a
    # collection in a fresh instance walks the whole snapshot heap, touching
    # (and so copying) every page of it, on every request.
    gc.collect()
    global _SNAPSHOT_OBJECTS, _SNAPSHOT_TOP, _BALLAST
    _SNAPSHOT_OBJECTS = _live_objects()
    _record_heap(os.path.join(plan["export_dir"], HEAP_FILE), _SNAPSHOT_OBJECTS)
    # Last, so that the temporaries above leave no new holes behind.
    _SNAPSHOT_TOP = max(map(id, _SNAPSHOT_OBJECTS))
    _BALLAST = _fill_holes(_SNAPSHOT_TOP)
    gc.freeze()
    return WitWorld


# Every object listed by _record_heap, kept alive until the snapshot: the host
# rewrites these exact headers in the memory image, so none may be freed (and
# its memory reused) before the snapshot is taken.
_SNAPSHOT_OBJECTS = []
# The highest address of those objects: what a request allocates should be
# above it, in memory no snapshot object shares a page with (see _fill_holes).
_SNAPSHOT_TOP = 0
# What _fill_holes allocated; never touched again.
_BALLAST = None


def _live_objects():
    """Every object reachable from the cyclic GC's lists, each once."""
    seen = set()
    objects = []
    pending = gc.get_objects()
    while pending:
        found = []
        for obj in pending:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            objects.append(obj)
            found.append(obj)
        # Strings, numbers and other untracked objects are reachable only
        # through their containers.
        pending = gc.get_referents(*found) if found else []
        for obj in found:
            if isinstance(obj, types.CodeType):
                pending.extend(_code_parts(obj))
    return objects


def _code_parts(code):
    """What a code object refers to, which the GC does not report.

    Code objects are not GC containers, so `gc.get_referents` sees nothing
    in them. Their constants, names and tables would stay mortal, and every
    request that runs the code would write to their reference counts.
    """
    # co_varnames and friends are new tuples on each access; only their
    # items are the code object's own.
    return (
        code.co_consts, code.co_names, code.co_linetable, code.co_exceptiontable,
        code.co_filename, code.co_name, code.co_qualname,
        *code.co_varnames, *code.co_cellvars, *code.co_freevars,
    )


# CPython for WASI is built without pymalloc: every object, however small,
# comes from wasi-libc's dlmalloc. A bytes object of n bytes asks malloc for
# 17 + n; with malloc's 4-byte chunk header, that is a chunk of 21 + n bytes,
# rounded up to the chunk alignment (8 or 16). Holes are filled from big to
# small, so that what is left of a big hole after one fill is filled by a
# smaller size later: powers of two down to 2 KiB, then every 8 bytes, then
# the smallest chunk, which holds no bytes object but does hold a bare object.
# The bytes are not zeros: the snapshot stores zero runs as gaps, and too
# many gaps exceed the limit on data segments.
_HOLE_FILLERS = (
    *(
        (chunk, lambda n=chunk - 21: b"\x01" * n)
        for chunk in (*(1 << k for k in range(16, 10, -1)), *range(2040, 16, -8))
    ),
    (16, object),
)
# Malloc hands out a free chunk of the exact size before anything else, the
# one freed last first, wherever it lies; a few of them may be above the old
# top while thousands more wait below it. So a size is done only once this
# many bytes in a row came from above the top (one allocation of the big
# sizes, 64 of the smallest).
_FRESH_BYTES = 1024
# Ballast is bounded however fragmented the heap is.
_MAX_BALLAST = 16 << 20
# CPython keeps freed objects of these kinds for reuse, wherever in the
# snapshot they were. Each makes a new one, so that taking enough of them
# empties the free lists (CPython keeps up to 2,000 tuples of each length,
# and fewer of the rest).
_FREE_LIST_KINDS = (
    *(lambda i, n=n: (i,) * n for n in range(1, 21)),  # tuples, by length
    lambda i: [i],  # lists
    lambda i: {i: i},  # dicts and their key tables
    lambda i: {"k": i},  # dicts with string keys (another kind of key table)
    lambda i: i * 0.5 + 0.25,  # floats
    lambda i: i * 1000003 + 1000003,  # ints (past the small-int cache)
    lambda i: slice(i, None),  # slices
)
_FREE_LIST_DRAIN = 4096
_FRESH_IN_A_ROW = 16


class _Ballast:
    """Keeps the filling alive, in rows of fixed size allocated up front.

    Not one growing list: each time a list grows, malloc moves its items to
    a bigger chunk and frees the old one, above the old top, where the next
    allocations of that size would go instead of into the holes below it.
    """

    ROW = 4096

    def __init__(self):
        # Rows for _MAX_BALLAST of the smallest objects, plus the free lists.
        self.rows = [None] * (_MAX_BALLAST // 16 // self.ROW + len(_FREE_LIST_KINDS) + 1)
        self.row = -1
        self.used = self.ROW
        self.bytes = 0

    def keep(self, obj, size):
        if self.used == self.ROW:
            self.row += 1
            self.rows[self.row] = [None] * self.ROW
            self.used = 0
        self.rows[self.row][self.used] = obj
        self.used += 1
        self.bytes += size


def _fill_holes(top):
    """Fills the free memory the build left in the heap, below address `top`.

    After pre-init the heap is full of holes, freed memory spread over the
    whole snapshot. A request would allocate into them and so write to (and
    copy) dozens of scattered snapshot pages, which also defeats the host's
    reset of just the written pages. Allocating until the allocator hands
    out memory above the old top leaves a request only fresh, contiguous
    memory. The same holds for CPython's free lists of tuples, lists, dicts,
    floats, ints and slices. The ballast is in the snapshot, shared by every
    instance, and never touched again.
    """
    ballast = _Ballast()
    for chunk, make in _HOLE_FILLERS:
        fresh = 0
        while fresh < _FRESH_BYTES and ballast.bytes < _MAX_BALLAST:
            obj = make()
            ballast.keep(obj, chunk)
            fresh = fresh + chunk if id(obj) > top else 0
    for make in _FREE_LIST_KINDS:
        # A free list is last in, first out, too.
        fresh = 0
        for i in range(_FREE_LIST_DRAIN):
            obj = make(i)
            ballast.keep(obj, 0)
            fresh = fresh + 1 if id(obj) > top else 0
            if fresh == _FRESH_IN_A_ROW:
                break
    return ballast


def _record_heap(path, objects):
    """Lists the header of every object alive in the snapshot.

    Each record is two little-endian u32: the object's address in linear
    memory (``id``) and its type's address (what ``ob_type``, the second
    header word, must hold). ``wsgi-wasm build`` sets the reference count of
    each verified header to CPython's immortal value in the memory image.
    An immortal object's count is never written again, so a request that
    merely uses the app's modules, functions and constants no longer copies
    every page they live on.
    """
    records = bytearray()
    for obj in objects:
        records += id(obj).to_bytes(4, "little") + id(type(obj)).to_bytes(4, "little")
    with open(path, "wb") as f:
        f.write(records)
