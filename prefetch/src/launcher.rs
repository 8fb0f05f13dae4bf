//! A private `redis-server` child on a free loopback port (feature
//! `launcher`): the server's embedded default, every test's Redis, and the
//! benches' baseline server all start here.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A free TCP port on 127.0.0.1 (free when asked; bind it soon).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// True when a Redis answers `PING` on 127.0.0.1:`port` within `timeout`.
pub fn ping(port: u16, timeout: Duration) -> bool {
    let addr = (Ipv4Addr::LOCALHOST, port).into();
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let _ = s.set_write_timeout(Some(timeout));
    if s.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

/// How to start a [`RedisServer`].
#[derive(Clone, Debug, Default)]
pub struct RedisOptions {
    /// Fsync every write to an append-only file, so the data survives
    /// `kill -9` and [`RedisServer::restart`].
    pub persistent: bool,
    /// Extra `redis-server` arguments (for example `--maxmemory 2mb`).
    pub args: Vec<String>,
    /// Ask the kernel to stop the child when this process dies, even by
    /// `SIGKILL` (Linux), so no server is ever orphaned.
    pub die_with_parent: bool,
    /// Environment variables for the child (for example a locale).
    pub env: Vec<(String, String)>,
}

/// A running private redis-server; killed (and its files removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// Dropping it ends the thread that started the child (see `spawn`).
    keeper: Option<Keeper>,
    options: RedisOptions,
}

impl RedisServer {
    /// Starts `redis-server` (or `$REDIS_SERVER`) on a free loopback port,
    /// without persistence unless asked, and waits until it answers.
    pub fn start(options: RedisOptions) -> std::io::Result<Self> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("prefetch-redis-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let mut last = std::io::Error::other("redis-server did not start");
        for _ in 0..5 {
            let port = free_port()?;
            match launch(port, &dir, &options) {
                Ok((child, keeper)) => {
                    return Ok(Self {
                        port,
                        dir,
                        child: Some(child),
                        keeper,
                        options,
                    });
                }
                Err(e) => last = e,
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:{port}/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `SIGKILL` the server (no shutdown, no save).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.keeper = None;
    }

    /// Its process id, while it runs (to pause it with `SIGSTOP`).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills it, removes its data (append-only file, snapshot) and starts
    /// it again on the same port: a node that lost everything.
    pub fn restart_empty(&mut self) -> std::io::Result<()> {
        self.kill();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // A cluster node keeps its identity (nodes.conf), loses its data.
            if name != "nodes.conf" {
                if path.is_dir() {
                    std::fs::remove_dir_all(&path)?;
                } else {
                    std::fs::remove_file(&path)?;
                }
            }
        }
        self.restart()
    }

    /// Starts it again on the same port (and, if persistent, the same data).
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill();
        let (child, keeper) = launch(self.port, &self.dir, &self.options)?;
        self.child = Some(child);
        self.keeper = keeper;
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the server and waits until it answers `PING`.
fn launch(
    port: u16,
    dir: &std::path::Path,
    options: &RedisOptions,
) -> std::io::Result<(Child, Option<Keeper>)> {
    let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    let mut cmd = Command::new(&bin);
    cmd.arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir);
    if options.persistent {
        cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
    } else {
        cmd.args(["--appendonly", "no"]);
    }
    cmd.args(&options.args)
        .envs(options.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let (mut child, keeper) = spawn(cmd, options.die_with_parent).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot run {bin}: {e} (install redis-server)"),
        )
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(std::io::Error::other(format!(
                "{bin} exited with {status} (port {port} taken?)"
            )));
        }
        if ping(port, Duration::from_millis(200)) {
            return Ok((child, keeper));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err(std::io::Error::other(format!(
        "{bin} did not answer on port {port} within 10 s"
    )))
}

fn spawn(mut cmd: Command, die_with_parent_too: bool) -> std::io::Result<(Child, Option<Keeper>)> {
    if !die_with_parent_too {
        return Ok((cmd.spawn()?, None));
    }
    let (child, keeper) = spawn_tied(cmd, libc::SIGTERM, "redis-keeper")?;
    Ok((child, Some(keeper)))
}

/// Holds a child started by [`spawn_tied`] to this process.
///
/// The kernel signals the child when the *thread* that started it ends,
/// and that thread lives until this is dropped. Drop it once the child is
/// stopped.
#[derive(Debug)]
pub struct Keeper {
    _stop: std::sync::mpsc::Sender<()>,
}

/// Starts `cmd` so that it does not outlive this process.
///
/// The child is started from a thread of its own (named `thread`), with
/// the kernel told to send `signal` to the child when that thread ends
/// (Linux `PR_SET_PDEATHSIG`; elsewhere the child is simply started): if
/// this process dies, even by `SIGKILL`, the child goes too. Used for the
/// embedded redis-server (`SIGTERM`) and PostgreSQL (`SIGQUIT`).
pub fn spawn_tied(
    mut cmd: Command,
    signal: libc::c_int,
    thread: &str,
) -> std::io::Result<(Child, Keeper)> {
    die_with_parent(&mut cmd, signal);
    let (child_tx, child_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(thread.to_owned())
        .spawn(move || {
            let _ = child_tx.send(cmd.spawn());
            // Parked until the keeper is dropped (the sender goes away).
            let _ = stop_rx.recv();
        })?;
    let child = child_rx
        .recv()
        .map_err(|_| std::io::Error::other(format!("the {thread} thread ended")))??;
    Ok((child, Keeper { _stop: stop_tx }))
}

/// Asks the kernel to send `signal` to the child when the thread that
/// started it ends.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command, signal: libc::c_int) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent; it is the only call made between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command, _signal: libc::c_int) {}
