//! A private PostgreSQL on a free loopback port (feature `launcher`): the
//! server's `--primary postgres`, every test's database server, and the
//! benches' baseline.
//!
//! `initdb` into a temporary directory, then `postgres` itself as a child
//! process (no `pg_ctl`, so the kernel can stop it when this process dies),
//! with `wal_level=logical` and durability off (`fsync` and full-page
//! writes: a private server's data is thrown away anyway). Commits stay
//! synchronous, so a commit is decodable the moment it returns.
//! PostgreSQL refuses to run as root, so as root both run as the `postgres`
//! user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prefetch::launcher::{Keeper, spawn_tied};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A running private PostgreSQL; stopped (and its files removed) on drop.
#[derive(Debug)]
pub struct PostgresServer {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    child: Option<Child>,
    keeper: Option<Keeper>,
    owner: Option<(u32, u32)>,
}

/// The directory holding `initdb` and `postgres`: `$PG_BINDIR`, Debian's
/// `/usr/lib/postgresql/<newest>/bin`, or wherever `initdb` is on `PATH`.
pub fn bin_dir() -> std::io::Result<PathBuf> {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .find(|dir| dir.join("initdb").exists() && dir.join("postgres").exists())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "PostgreSQL's initdb and postgres were not found (install postgresql, or set PG_BINDIR)",
            )
        })
}

/// The uid and gid of the `postgres` user, read from `/etc/passwd`.
fn postgres_user() -> std::io::Result<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let mut parts = line.split(':');
            (parts.next()? == "postgres").then_some(())?;
            let uid = parts.nth(1)?.parse().ok()?;
            let gid = parts.next()?.parse().ok()?;
            Some((uid, gid))
        })
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "running as root, PostgreSQL needs the postgres user (install postgresql)",
            )
        })
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl PostgresServer {
    /// Initialises a fresh cluster in a temporary directory and starts it on
    /// a free loopback port; returns once it accepts connections.
    pub fn start() -> std::io::Result<Self> {
        let bin = bin_dir()?;
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("prefetch-pg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let owner = if running_as_root() {
            Some(postgres_user()?)
        } else {
            None
        };
        if let Some((uid, gid)) = owner {
            chown(&dir, uid, gid)?;
        }
        let data = dir.join("data");
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .arg("-D")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_owner(&mut initdb, owner);
        let out = initdb.output()?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(std::io::Error::other(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let mut last = std::io::Error::other("postgres did not start");
        for _ in 0..5 {
            let port = prefetch::launcher::free_port()?;
            let mut server = Self {
                port,
                dir: dir.clone(),
                bin: bin.clone(),
                child: None,
                keeper: None,
                owner,
            };
            match server.launch() {
                Ok(()) => return Ok(server),
                Err(e) => {
                    last = e;
                    // Keep the directory for the next port.
                    server.dir = PathBuf::new();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last)
    }

    fn launch(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(&self.dir)
            .args([
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "wal_level=logical",
                "-c",
                "max_replication_slots=64",
                "-c",
                "max_wal_senders=64",
                "-c",
                "max_connections=200",
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
                "-c",
                "wal_sender_timeout=30s",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("log"))?);
        as_owner(&mut cmd, self.owner);
        // SIGQUIT, PostgreSQL's immediate shutdown, if this process dies.
        let (mut child, keeper) = spawn_tied(cmd, libc::SIGQUIT, "postgres-keeper")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
                return Err(std::io::Error::other(format!(
                    "postgres exited with {status}: {}",
                    log.lines().last().unwrap_or("")
                )));
            }
            if self.ready() {
                self.child = Some(child);
                self.keeper = Some(keeper);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(std::io::Error::other(format!(
            "postgres did not accept connections on port {} within 20 s",
            self.port
        )))
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// The postmaster's process id, while it runs (its backends are its
    /// children).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:{port}/{database}`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The directory of its binaries (`psql`, `pg_dump`, …).
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// `SIGKILL`s the postmaster, as a crash would (its backends follow).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.keeper = None;
        // The backends notice the postmaster is gone and exit; wait until
        // the port is free so a restart can bind it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.ready() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(self.dir.join("data").join("postmaster.pid"));
    }

    /// Stops it the way `pg_ctl stop -m fast` would (`SIGINT`) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) with a valid signal on our own child.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
            // A fast shutdown waits for the WAL senders; one whose client
            // is slow to answer can hold it past the wait. Then an
            // immediate one (SIGQUIT), which ends every backend first:
            // SIGKILL alone would leave them holding the data directory.
            for signal in [libc::SIGQUIT, libc::SIGKILL] {
                let deadline = Instant::now() + Duration::from_secs(10);
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if let Ok(pid) = i32::try_from(child.id()) {
                    // SAFETY: kill(2) with a valid signal on our own child.
                    unsafe {
                        libc::kill(pid, signal);
                    }
                }
            }
            let _ = child.wait();
        }
        self.keeper = None;
    }

    /// Starts it again on the same port with the same data (after
    /// [`kill`](Self::kill) or [`stop`](Self::stop)): crash recovery runs.
    /// Backends of the old server still exiting hold the data directory
    /// for a moment: the start is tried again for up to 10 s.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.launch() {
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!(error = %e, "PostgreSQL did not start yet; trying again");
                    std::thread::sleep(Duration::from_millis(250));
                }
                other => return other,
            }
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if let Some(mut child) = self.child.take() {
            // Immediate shutdown: nothing here needs to survive.
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) with a valid signal on our own child.
                unsafe {
                    libc::kill(pid, libc::SIGQUIT);
                }
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.keeper = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn chown(path: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
}

fn as_owner(cmd: &mut Command, owner: Option<(u32, u32)>) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid).env("HOME", "/tmp");
    }
}
