//! The real servers the network clients talk to: Debian's PostgreSQL, Redis
//! and MariaDB, installed with apt-get when missing and started by the test
//! on 127.0.0.1, on a free port, in a temporary directory of their own.
//! Each is stopped when its value is dropped; none is the system service.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::{ensure_debian_packages, free_port, running_as_root, succeed, wait_for_port, KillOnDrop};

/// The user, password and database every server here is set up with.
pub const USER: &str = "app";
pub const PASSWORD: &str = "secret";
pub const DATABASE: &str = "app";

/// A PostgreSQL cluster of its own (`initdb`, then `pg_ctl start`), with a
/// password login by SCRAM over TCP and TLS on, so that a client can ask
/// for it. PostgreSQL refuses to run as root: as root, it runs as Debian's
/// `postgres` user.
pub struct Postgres {
    pub port: u16,
    bin: PathBuf,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// The newest server Debian installed, if any.
    fn bin_dir() -> Option<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| Some(e.ok()?.path().join("bin")))
            .filter(|bin| bin.join("initdb").exists())
            .collect();
        found.sort_by_key(|p| p.parent().and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok()));
        found.pop()
    }

    /// `cmd` as the user PostgreSQL runs as.
    fn as_owner(program: &Path) -> Command {
        if running_as_root() {
            let mut cmd = Command::new("runuser");
            cmd.args(["-u", "postgres", "--"]).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    /// A server whose TLS certificate is self-signed, which no sandbox
    /// trusts.
    pub fn start() -> Self {
        Self::start_with_tls(None)
    }

    /// A server with TLS on: with `cert_and_key` (PEM files), else with a
    /// throwaway self-signed certificate.
    pub fn start_with_tls(cert_and_key: Option<(&Path, &Path)>) -> Self {
        ensure_debian_packages("postgresql openssl", || {
            Self::bin_dir().is_some() && Path::new("/usr/bin/openssl").exists()
        });
        let bin = Self::bin_dir().expect("PostgreSQL is installed");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("password"), PASSWORD).unwrap();
        match cert_and_key {
            Some((cert, key)) => {
                std::fs::copy(cert, d.join("server.crt")).unwrap();
                std::fs::copy(key, d.join("server.key")).unwrap();
            }
            None => {
                succeed(
                    Command::new("openssl").args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]).args(
                        [
                            "-subj",
                            "/CN=localhost",
                            "-keyout",
                            &d.join("server.key").display().to_string(),
                            "-out",
                            &d.join("server.crt").display().to_string(),
                        ],
                    ),
                    "openssl req",
                );
            }
        }
        if running_as_root() {
            succeed(Command::new("chown").args(["-R", "postgres:postgres"]).arg(d), "chown");
        }
        succeed(Command::new("chmod").arg("600").arg(d.join("server.key")), "chmod");
        let data = d.join("data");
        succeed(
            Self::as_owner(&bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", USER, "--auth=scram-sha-256", "-E", "UTF8", "--no-sync"])
                .arg(format!("--pwfile={}", d.join("password").display())),
            "initdb",
        );
        let port = free_port();
        let options = format!(
            "-p {port} -k {d} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={d}/server.crt -c ssl_key_file={d}/server.key -c fsync=off",
            d = d.display()
        );
        succeed(
            Self::as_owner(&bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(d.join("log"))
                .args(["-w", "-t", "60", "-o", &options, "start"]),
            "pg_ctl start",
        );
        succeed(
            Command::new("psql")
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", USER, "-d", "postgres", "-q"])
                .args(["-c", &format!("CREATE DATABASE {DATABASE}")])
                .env("PGPASSWORD", PASSWORD),
            "CREATE DATABASE",
        );
        Self { port, bin, dir }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Self::as_owner(&self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// `redis-server` with nothing saved to disk.
pub struct Redis {
    pub port: u16,
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl Redis {
    pub fn start() -> Self {
        ensure_debian_packages("redis-server", || Path::new("/usr/bin/redis-server").exists());
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "redis-server", Duration::from_secs(30));
        Self { port, _child: KillOnDrop(child), _dir: dir }
    }

    /// `GET key`, asked by the test itself over RESP.
    pub fn get(&self, key: &str) -> String {
        use std::io::{Read, Write};
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len()).as_bytes()).unwrap();
        let mut buf = [0u8; 256];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// A MariaDB server of its own (`mariadb-install-db`, then `mariadbd`), with
/// a database and a password user made by an init file at start.
pub struct MariaDb {
    pub port: u16,
    _child: KillOnDrop,
    _dir: tempfile::TempDir,
}

impl MariaDb {
    pub fn start() -> Self {
        // `mariadb-install-db` runs `my_print_defaults`, which is in the
        // client package.
        ensure_debian_packages("mariadb-server-core mariadb-client-core", || {
            Path::new("/usr/sbin/mariadbd").exists() && Path::new("/usr/bin/my_print_defaults").exists()
        });
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // As root, the server runs as root: the package alone makes no user.
        let user = if running_as_root() { vec!["--user=root"] } else { vec![] };
        succeed(
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg(format!("--datadir={}", d.join("data").display()))
                .args(&user)
                .args(["--auth-root-authentication-method=socket", "--skip-test-db"]),
            "mariadb-install-db",
        );
        std::fs::write(
            d.join("init.sql"),
            format!(
                "CREATE DATABASE IF NOT EXISTS {DATABASE};\n\
                 CREATE USER IF NOT EXISTS '{USER}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}';\n\
                 GRANT ALL ON {DATABASE}.* TO '{USER}'@'127.0.0.1';\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .args(&user)
            .args(["--bind-address=127.0.0.1", &format!("--port={port}"), "--skip-name-resolve"])
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--init-file={}", d.join("init.sql").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .args(["--innodb-buffer-pool-size=16M", "--max-connections=20"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_port(port, "mariadbd", Duration::from_secs(60));
        Self { port, _child: KillOnDrop(child), _dir: dir }
    }
}
