//! Apps nobody here wrote, deployed the way their frameworks document
//! (issue 35): Flask's tutorial app (flaskr), a `django-admin
//! startproject` site, Pyramid's hello world and a Django 6 site; and what
//! they need from the sandbox: `hashlib.pbkdf2_hmac` and `hashlib.scrypt`
//! (computed by the host), time zones, writable folders inside the app's
//! tree, settings read at build time, and requirements resolved for the
//! guest's Python.
//!
//! The apps come from PyPI: flaskr from Flask's source distribution,
//! the Django site from Django's own `startproject`; their requirements are
//! written as a newcomer writes them (`flask`, `django`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{build_cmd, fixture, raw_get, refused_run, succeed, Server};

/// A directory of its own under the test binary's scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("real-apps").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs a command of the build machine, which must succeed; its stdout.
fn run(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&succeed(cmd, "a command of the build machine").stdout).into_owned()
}

/// `wsgi-wasm build` with `args`, which must succeed; what it printed.
fn build(args: &[&str], cwd: &Path) -> String {
    let out = build_cmd(args, cwd);
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "wsgi-wasm build {args:?} failed:\n{printed}");
    printed
}

/// A client that keeps cookies (sessions, CSRF tokens) and does not follow
/// redirects, so that each status can be checked.
fn browser() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Flask's tutorial app, from Flask's source distribution on PyPI.
fn flaskr_source(dir: &Path) -> PathBuf {
    run(Command::new("python3")
        .args(["-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "flask==3.1.3", "-d"])
        .arg(dir));
    run(Command::new("tar").arg("xzf").arg(dir.join("flask-3.1.3.tar.gz")).arg("-C").arg(dir));
    dir.join("flask-3.1.3/examples/tutorial")
}

#[test]
fn r35_flasks_tutorial_app_registers_logs_in_and_posts_with_its_instance_folder_mounted() {
    // Issue 35.
    let dir = scratch("flaskr");
    let app = flaskr_source(&dir);
    std::fs::write(app.join("requirements.txt"), "flask\n").unwrap();
    let wasm = dir.join("flaskr.wasm");
    let printed =
        build(&["flaskr:create_app()", "--path", ".", "-r", "requirements.txt", "-o", wasm.to_str().unwrap()], &app);
    assert!(printed.contains("bundling tzdata"), "{printed}");
    // The factory made the instance folder (`os.makedirs`) while it ran at
    // build time: the tree holds it, empty, at /0/instance. The database is
    // created as `flask init-db` creates it, from the app's schema.sql.
    let data = dir.join("instance");
    std::fs::create_dir_all(&data).unwrap();
    let schema = std::fs::read_to_string(app.join("flaskr/schema.sql")).unwrap();
    run(Command::new("python3")
        .args(["-c", "import sqlite3, sys; sqlite3.connect(sys.argv[1]).executescript(sys.argv[2])"])
        .arg(data.join("flaskr.sqlite"))
        .arg(&schema));

    // A mount that would hide the app's own files stays refused, by name.
    let refused = refused_run(&wasm, &["--mount", &format!("{}:/0/flaskr:rw", data.display())]);
    assert!(refused.contains("would hide the app's own files (/0/flaskr/__init__.py"), "{refused}");

    let server = Server::start(&wasm, &["--mount", &format!("{}:/0/instance:rw", data.display())]);
    let web = browser();
    let form = |path: &str, fields: &[(&str, &str)]| web.post(server.url(path)).form(fields).send().unwrap();
    let login = [("username", "alice"), ("password", "correct horse")];
    // Werkzeug hashes the password with scrypt.
    let registered = form("/auth/register", &login);
    assert_eq!(registered.status(), 302, "{}", server.log());
    assert_eq!(registered.headers()["location"], "/auth/login");
    let wrong = form("/auth/login", &[("username", "alice"), ("password", "wrong")]);
    assert_eq!(wrong.status(), 200);
    assert!(wrong.text().unwrap().contains("Incorrect password."));
    let logged_in = form("/auth/login", &login);
    assert_eq!(logged_in.status(), 302, "{}", server.log());
    assert_eq!(logged_in.headers()["location"], "/");
    let posted = form("/create", &[("title", "Hello from a sandbox"), ("body", "Written through a mount.")]);
    assert_eq!(posted.status(), 302, "{}", server.log());
    let index = web.get(server.url("/")).send().unwrap().text().unwrap();
    assert!(index.contains("Hello from a sandbox") && index.contains("Written through a mount."), "{index}");
    assert!(index.contains("by alice") && index.contains("Log Out"), "{index}");
    // The password hash the app stored is Werkzeug's scrypt, as a native
    // CPython would have written it.
    let stored = run(Command::new("python3")
        .args(["-c", "import sqlite3, sys; print(sqlite3.connect(sys.argv[1]).execute('select password from user').fetchone()[0])"])
        .arg(data.join("flaskr.sqlite")));
    assert!(stored.starts_with("scrypt:32768:8:1$"), "{stored}");
    // The host's work for scrypt shows in the access lines.
    assert!(server.log().contains("kdf_ms="), "{}", server.log());
}

/// A project as `django-admin startproject` makes it, with the edits a
/// deployer makes: DEBUG off, ALLOWED_HOSTS, the database path from the
/// environment, a time zone. Migrated and given a superuser natively.
fn startproject(dir: &Path) -> (PathBuf, PathBuf) {
    let native = dir.join("native");
    // The build machine's Python is 3.11: Django 5.2 is the newest that runs
    // on it natively. The guest gets whatever `django` resolves to for 3.14.
    run(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
        .arg(&native)
        .arg("django>=5.2,<6")
        .env("PIP_ROOT_USER_ACTION", "ignore"));
    run(Command::new("python3")
        .args(["-m", "django", "startproject", "mysite"])
        .current_dir(dir)
        .env("PYTHONPATH", &native));
    let project = dir.join("mysite");
    let settings = project.join("mysite/settings.py");
    let text = std::fs::read_to_string(&settings).unwrap();
    let edited = text
        .replace("from pathlib import Path", "import os\nfrom pathlib import Path")
        .replace("DEBUG = True", "DEBUG = False")
        .replace("ALLOWED_HOSTS = []", "ALLOWED_HOSTS = ['127.0.0.1', 'localhost']")
        .replace("'NAME': BASE_DIR / 'db.sqlite3',", "'NAME': os.environ.get('DJANGO_DB', BASE_DIR / 'db.sqlite3'),")
        .replace("TIME_ZONE = 'UTC'", "TIME_ZONE = 'Europe/Paris'");
    assert_ne!(text, edited);
    std::fs::write(&settings, edited).unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let manage = |args: &[&str]| {
        run(Command::new("python3")
            .arg("manage.py")
            .args(args)
            .current_dir(&project)
            .env("PYTHONPATH", &native)
            .env("DJANGO_DB", data.join("db.sqlite3"))
            .env("DJANGO_SUPERUSER_PASSWORD", "a long admin password"))
    };
    manage(&["migrate", "-v", "0"]);
    manage(&["createsuperuser", "--noinput", "--username", "admin", "--email", "admin@example.com"]);
    (project, data)
}

#[test]
fn r35_a_startproject_site_logs_in_to_its_admin_with_time_zones_and_build_time_settings() {
    // Issue 35.
    let dir = scratch("django");
    let (project, data) = startproject(&dir);
    std::fs::write(project.join("requirements.txt"), "django\n").unwrap();
    let wasm = dir.join("mysite.wasm");
    let printed = build(
        &[
            "mysite.wsgi:application",
            "--path",
            ".",
            "-r",
            "requirements.txt",
            "--env",
            "DJANGO_DB=/data/db.sqlite3",
            "-o",
            wasm.to_str().unwrap(),
        ],
        &project,
    );
    // Settings read os.environ at import: the build says which, by name.
    assert!(printed.contains("the app read DJANGO_DB while it was built"), "{printed}");
    assert!(printed.contains("Django time zone: Europe/Paris"), "{printed}");
    assert!(!printed.contains("/data/db.sqlite3"), "a value was printed: {printed}");

    // A run-time --env of a variable read at build time gets a warning.
    let server = Server::start(
        &wasm,
        &["--mount", &format!("{}:/data:rw", data.display()), "--env", "DJANGO_DB=/elsewhere/db.sqlite3"],
    );
    assert!(server.log().contains("--env DJANGO_DB: the app read DJANGO_DB while it was built"), "{}", server.log());
    let web = browser();
    let page = web.get(server.url("/admin/login/?next=/admin/")).send().unwrap();
    assert_eq!(page.status(), 200, "{}", server.log());
    let html = page.text().unwrap();
    let token = html
        .split("name=\"csrfmiddlewaretoken\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in {html}"));
    // Django checks the superuser's PBKDF2-SHA256 hash (a million
    // iterations, made natively), then upgrades it to its own count.
    let login = web
        .post(server.url("/admin/login/?next=/admin/"))
        .header("Referer", server.url("/admin/login/"))
        .form(&[
            ("csrfmiddlewaretoken", token),
            ("username", "admin"),
            ("password", "a long admin password"),
            ("next", "/admin/"),
        ])
        .send()
        .unwrap();
    assert_eq!(login.status(), 302, "{}", server.log());
    assert_eq!(login.headers()["location"], "/admin/");
    let index = web.get(server.url("/admin/")).send().unwrap();
    assert_eq!(index.status(), 200);
    let index = index.text().unwrap();
    assert!(index.contains("Site administration") && index.contains("<strong>admin</strong>"), "{index}");
    let users = web.get(server.url("/admin/auth/user/")).send().unwrap().text().unwrap();
    assert!(users.contains("admin@example.com") && users.contains("1 user"), "{users}");
    // A wrong password is refused by the same hasher.
    let anonymous = browser();
    let page = anonymous.get(server.url("/admin/login/")).send().unwrap().text().unwrap();
    let token = page.split("name=\"csrfmiddlewaretoken\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    let refused = anonymous
        .post(server.url("/admin/login/"))
        .header("Referer", server.url("/admin/login/"))
        .form(&[("csrfmiddlewaretoken", token), ("username", "admin"), ("password", "not it")])
        .send()
        .unwrap();
    assert_eq!(refused.status(), 200);
    assert!(refused.text().unwrap().contains("Please enter the correct username and password"));
}

#[test]
fn r35_pyramid_and_django_6_resolve_for_the_guests_python_on_a_311_build_machine() {
    // Issue 35: WebOb needs legacy-cgi on 3.13+ (a marker pip evaluated for
    // the build machine's 3.11), and Django 6 requires Python 3.12.
    let python = run(Command::new("python3").args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]));
    eprintln!("the build machine's Python: {}", python.trim());
    let dir = scratch("resolve");
    // Pyramid's own "Hello World", from its documentation.
    let pyramid = dir.join("pyramid");
    std::fs::create_dir_all(&pyramid).unwrap();
    std::fs::write(
        pyramid.join("hello.py"),
        "from pyramid.config import Configurator\nfrom pyramid.response import Response\n\n\n\
         def hello_world(request):\n    return Response('Hello World!')\n\n\n\
         with Configurator() as config:\n    config.add_route('hello', '/')\n    \
         config.add_view(hello_world, route_name='hello')\n    app = config.make_wsgi_app()\n",
    )
    .unwrap();
    std::fs::write(pyramid.join("requirements.txt"), "pyramid\n").unwrap();
    build(&["hello:app", "--path", ".", "-r", "requirements.txt", "-o", "hello.wasm"], &pyramid);
    let server = Server::start(&pyramid.join("hello.wasm"), &[]);
    let reply = raw_get(server.addr, "localhost", "/");
    assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("Hello World!"), "{reply}");
    drop(server);

    // A one-file Django site that says which Django and Python it runs on.
    let site = dir.join("django6");
    std::fs::create_dir_all(&site).unwrap();
    std::fs::write(
        site.join("site6.py"),
        "import sys\nimport django\nfrom django.conf import settings\nfrom django.http import JsonResponse\n\
         from django.urls import path\n\n\
         settings.configure(DEBUG=False, ALLOWED_HOSTS=['*'], ROOT_URLCONF=__name__, SECRET_KEY='x' * 50)\n\n\n\
         def version(request):\n    return JsonResponse({'django': django.VERSION[:2], 'python': sys.version_info[:2]})\n\n\n\
         urlpatterns = [path('', version)]\n\n\
         from django.core.wsgi import get_wsgi_application\n\napplication = get_wsgi_application()\n",
    )
    .unwrap();
    std::fs::write(site.join("requirements.txt"), "django>=6\n").unwrap();
    build(&["site6:application", "--path", ".", "-r", "requirements.txt", "-o", "site6.wasm"], &site);
    let server = Server::start(&site.join("site6.wasm"), &[]);
    let body = crate::common::json(crate::common::client().get(server.url("/")).send().unwrap());
    assert!(body["django"][0].as_u64().unwrap() >= 6, "{body}");
    assert_eq!(body["python"], serde_json::json!([3, 14]), "{body}");
}

/// What `hashlib.<fn>` gives for each call, in native CPython (with
/// OpenSSL) and in the guest (`/kdf` of the fixture).
fn kdf_in_both(server: &Server, calls: &serde_json::Value) -> (serde_json::Value, serde_json::Value) {
    let guest: serde_json::Value =
        crate::common::json(crate::common::client().post(server.url("/kdf")).body(calls.to_string()).send().unwrap());
    let native = run(Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import json, sys\nsys.path.insert(0, {:?})\nfrom kdf_calls import kdf_call\n\
         print(json.dumps([kdf_call(c) for c in json.loads(sys.argv[1])]))",
            crate::common::repo().join("tests/apps").display().to_string()
        ))
        .arg(calls.to_string()));
    (guest, serde_json::from_str(&native).unwrap())
}

#[test]
fn r35_pbkdf2_and_scrypt_give_cpythons_bytes_and_errors() {
    // Issue 35.
    use serde_json::json;
    let server = Server::start(fixture(), &[]);
    let hex = |s: &str| format!("hex:{}", s.bytes().map(|b| format!("{b:02x}")).collect::<String>());
    let mut calls = vec![
        // RFC 6070.
        json!({"fn": "pbkdf2_hmac", "args": ["sha1", hex("password"), hex("salt"), 4096, 20]}),
        json!({"fn": "pbkdf2_hmac", "args": ["sha1", hex("pass\0word"), hex("sa\0lt"), 4096, 16]}),
        // RFC 7914 §12.
        json!({"fn": "scrypt", "args": [hex("")], "kwargs": {"salt": hex(""), "n": 16, "r": 1, "p": 1}}),
        json!({"fn": "scrypt", "args": [hex("password")], "kwargs": {"salt": hex("NaCl"), "n": 1024, "r": 8, "p": 16}}),
        // What Django and Werkzeug ask for.
        json!({"fn": "pbkdf2_hmac", "args": ["sha256", hex("admin"), hex("a salt of 22 chars...."), 100000]}),
        json!({"fn": "scrypt", "args": [hex("pw")], "kwargs": {"salt": hex("salt16charslong!"), "n": 32768, "r": 8, "p": 1, "maxmem": 132 * 32768 * 8}}),
        json!({"fn": "pbkdf2_hmac", "kwargs": {"hash_name": "SHA512", "password": hex("x"), "salt": hex("y"), "iterations": 1000, "dklen": 100}}),
    ];
    for (i, name) in ["sha256", "sha512", "sha224", "sha384", "sha3_256", "blake2b", "md5"].iter().enumerate() {
        let password = hex(&format!("password {i} {}", "é".repeat(i)));
        calls.push(json!({"fn": "pbkdf2_hmac", "args": [name, password, hex(&"s".repeat(i * 7)), 1 + 997 * i]}));
    }
    // Bad arguments: each gives CPython's exception and message.
    let bad = [
        json!({"fn": "pbkdf2_hmac", "args": ["sha256", "text", hex("s"), 1]}),
        json!({"fn": "pbkdf2_hmac", "args": ["sha256", hex("p"), hex("s"), 0]}),
        json!({"fn": "pbkdf2_hmac", "args": ["sha256", hex("p"), hex("s"), -5]}),
        json!({"fn": "pbkdf2_hmac", "args": ["sha256", hex("p"), hex("s"), 2147483648_u64]}),
        json!({"fn": "pbkdf2_hmac", "args": ["sha256", hex("p"), hex("s"), 1.5]}),
        json!({"fn": "pbkdf2_hmac", "args": ["sha256", hex("p"), hex("s"), 1, 0]}),
        json!({"fn": "pbkdf2_hmac", "args": ["sha256", hex("p"), hex("s"), 1, 2147483648_u64]}),
        json!({"fn": "scrypt", "args": [hex("p")], "kwargs": {"salt": hex("s"), "n": 3, "r": -1, "p": 1}}),
        json!({"fn": "scrypt", "args": [hex("p")], "kwargs": {"salt": hex("s"), "n": 4, "r": -1, "p": 1}}),
        json!({"fn": "scrypt", "args": [hex("p")], "kwargs": {"salt": hex("s"), "n": 4, "r": 1.0, "p": 1}}),
        json!({"fn": "scrypt", "args": [hex("p")], "kwargs": {"n": 4, "r": 1, "p": 1}}),
        json!({"fn": "scrypt", "args": [hex("p")], "kwargs": {"salt": hex("s"), "r": 1, "p": 1}}),
        json!({"fn": "scrypt", "args": [hex("p")], "kwargs": {"salt": hex("s"), "n": 4, "r": 0, "p": 1}}),
        json!({"fn": "scrypt", "args": [hex("p")], "kwargs": {"salt": hex("s"), "n": 1048576, "r": 8, "p": 1}}),
        json!({"fn": "scrypt", "args": [hex("p")], "kwargs": {"salt": hex("s"), "n": 4, "r": 1, "p": 1, "maxmem": -1}}),
        json!({"fn": "scrypt", "args": [hex("p")], "kwargs": {"salt": hex("s"), "n": 4, "r": 1, "p": 1, "dklen": 0}}),
        json!({"fn": "scrypt", "args": [hex("p"), hex("s")], "kwargs": {"n": 4, "r": 1, "p": 1}}),
        json!({"fn": "scrypt", "kwargs": {"salt": hex("s"), "n": 4, "r": 1, "p": 1}}),
        json!({"fn": "scrypt", "args": [hex("p")], "kwargs": {"password": hex("p"), "n": 4, "r": 1, "p": 1}}),
        json!({"fn": "scrypt", "args": [hex("p")], "kwargs": {"salt": hex("s"), "n": 4, "r": 1, "p": 1, "x": 1}}),
        json!({"fn": "scrypt", "kwargs": {"password": hex("p"), "salt": hex("s"), "n": 2, "r": 1, "p": 1, "dklen": 4}}),
        json!({"fn": "pbkdf2_hmac", "args": ["sha256", hex("p"), hex("s"), 1, 2, 3]}),
        json!({"fn": "pbkdf2_hmac", "args": ["sha256", hex("p"), hex("s")]}),
        json!({"fn": "pbkdf2_hmac", "args": ["sha256", hex("p"), hex("s"), 1], "kwargs": {"salt": hex("t")}}),
        json!({"fn": "pbkdf2_hmac", "args": [hex("sha256"), hex("p"), hex("s"), 1]}),
    ];
    calls.extend(bad.iter().cloned());
    let (guest, native) = kdf_in_both(&server, &json!(calls));
    for (i, call) in calls.iter().enumerate() {
        assert_eq!(guest[i], native[i], "{call}");
    }
    assert!(guest.as_array().unwrap().iter().filter(|r| r.get("hex").is_some()).count() >= 14);
    // A hash the host does not compute: a ValueError (UnsupportedDigestmodError,
    // as CPython's), whatever OpenSSL's message.
    let (guest, native) =
        kdf_in_both(&server, &json!([{"fn": "pbkdf2_hmac", "args": ["nope", "hex:70", "hex:73", 1]}]));
    assert_eq!(guest[0]["error"], "UnsupportedDigestmodError");
    assert_eq!(guest[0]["message"], "unsupported hash type nope");
    assert_eq!((&guest[0]["error"], &guest[0]["is_value_error"]), (&native[0]["error"], &native[0]["is_value_error"]));
}

#[test]
fn r35_key_derivation_stops_at_the_deadline_and_scrypt_past_the_memory_limit_is_never_computed() {
    // Issue 35.
    let server = Server::start(fixture(), &["--timeout", "2", "--memory", "64"]);
    let addr = server.addr;
    let started = Instant::now();
    let billion = std::thread::spawn(move || {
        let body = r#"[{"fn": "pbkdf2_hmac", "args": ["sha256", "hex:70", "hex:73", 1000000000]}]"#;
        let request = format!(
            "POST /kdf HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        crate::common::raw_text(addr, request.as_bytes())
    });
    // Meanwhile another request is answered.
    std::thread::sleep(Duration::from_millis(300));
    let other = raw_get(server.addr, "t", "/list");
    assert!(other.starts_with("HTTP/1.1 200") && other.ends_with("abc\n"), "{other}");
    assert!(!billion.is_finished(), "the billion iterations ended early");
    let reply = billion.join().unwrap();
    assert!(reply.starts_with("HTTP/1.1 504"), "{reply}");
    // The deadline is 2 s: a few seconds at most, where the whole
    // derivation would take minutes.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(server.wait_for_log("ran past its 2s deadline", Duration::from_secs(5)), "{}", server.log());

    // scrypt asking for 128 MiB beside a 64 MiB limit: a MemoryError, and
    // no key derivation ran (the access line has no kdf_ms).
    let calls = r#"[{"fn": "scrypt", "args": ["hex:70"], "kwargs": {"salt": "hex:73", "n": 131072, "r": 8, "p": 1, "maxmem": 2000000000}}]"#;
    let resp = crate::common::client().post(server.url("/kdf?memory")).body(calls).send().unwrap();
    let result = crate::common::json(resp);
    assert_eq!(result[0]["error"], "MemoryError", "{result}");
    assert!(result[0]["message"].as_str().unwrap().contains("scrypt needs 129 MiB"), "{result}");
    assert!(server.wait_for_log("\"POST /kdf?memory\" 200", Duration::from_secs(5)));
    let line = server.log().lines().find(|l| l.contains("\"POST /kdf?memory\"")).unwrap().to_owned();
    assert!(!line.contains("kdf_ms"), "{line}");
    assert!(server.log().contains("refused scrypt: past the request's memory limit"), "{}", server.log());
}

#[test]
fn r35_time_zones_work_with_no_requirement() {
    // Issue 35: the fixture is built with no requirements at all.
    let server = Server::start(fixture(), &[]);
    let reply = raw_get(server.addr, "t", "/tz?key=Europe/Paris");
    assert!(reply.contains(r#""offsets": ["1:00:00", "2:00:00"]"#), "{reply}");
    let reply = raw_get(server.addr, "t", "/tz?key=America/New_York");
    assert!(reply.contains(r#""offsets": ["-1 day, 19:00:00", "-1 day, 20:00:00"]"#), "{reply}");
}

#[test]
fn r35_build_env_is_the_apps_whole_environment_and_its_reads_are_named_never_valued() {
    // Issue 35.
    let dir = scratch("settings");
    std::fs::write(
        dir.join("settings_app.py"),
        "import os\n\nDEBUG = os.environ.get('DEBUG') == '1'\nSITE = os.environ['SITE_NAME']\n\
         HOME_AT_BUILD = os.environ.get('HOME')\nSECRET = os.getenv('SECRET_KEY', '')\n\n\n\
         def app(environ, start_response):\n    import json\n\n\
         \x20   body = json.dumps({'debug': DEBUG, 'site': SITE, 'home': HOME_AT_BUILD, 'secret': SECRET,\n\
         \x20                      'debug_now': os.environ.get('DEBUG')}).encode()\n\
         \x20   start_response('200 OK', [('Content-Type', 'application/json')])\n    return [body]\n",
    )
    .unwrap();
    std::fs::write(dir.join("build.env"), "# build settings\nexport DEBUG=1\nSITE_NAME=\"site-7f3a9\"\n").unwrap();
    let printed =
        build(&["settings_app:app", "--path", ".", "--env-file", "build.env", "--env", "SITE_NAME=site-c0ffee"], &dir);
    assert!(printed.contains("the app read DEBUG, SITE_NAME while it was built"), "{printed}");
    assert!(printed.contains("which the build did not set: HOME, SECRET_KEY"), "{printed}");
    assert!(!printed.contains("site-c0ffee") && !printed.contains("site-7f3a9"), "a value was printed: {printed}");

    let server = Server::start(&dir.join("app.wasm"), &["--env", "DEBUG=0", "--env", "SECRET_KEY=s3"]);
    for key in ["DEBUG", "SECRET_KEY"] {
        assert!(
            server.log().contains(&format!("--env {key}: the app read {key} while it was built")),
            "{}",
            server.log()
        );
    }
    let reply = raw_get(server.addr, "t", "/");
    let body: serde_json::Value = serde_json::from_str(reply.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    // What the app kept at import is the build's (the --env over the
    // --env-file, and nothing of the build machine's HOME); per request,
    // os.environ is the run's.
    assert_eq!(
        body,
        serde_json::json!({"debug": true, "site": "site-c0ffee", "home": null, "secret": "", "debug_now": "0"})
    );
}
