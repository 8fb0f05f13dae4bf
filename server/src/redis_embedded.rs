//! The embedded default: a private `redis-server` child on a free loopback
//! port, without persistence, stopped when the server stops.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

use crate::Error;

/// A running private redis-server.
#[derive(Debug)]
pub struct EmbeddedRedis {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl EmbeddedRedis {
    /// Starts `redis-server` (or `$REDIS_SERVER`) on a free loopback port and
    /// waits until it answers.
    pub async fn start() -> Result<Self, Error> {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port().await?;
            let dir = std::env::temp_dir()
                .join(format!("prefetch-embedded-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).map_err(|e| Error::Embedded(e.to_string()))?;
            let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
            let mut cmd = Command::new(&bin);
            cmd.arg("--port")
                .arg(port.to_string())
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true);
            die_with_parent(&mut cmd);
            let mut child = cmd.spawn().map_err(|e| {
                Error::Embedded(format!("cannot run {bin}: {e} (install redis-server)"))
            })?;
            for _ in 0..200 {
                if ping(port).await {
                    return Ok(Self { child, port, dir });
                }
                if let Ok(Some(status)) = child.try_wait() {
                    last = format!("{bin} exited with {status}");
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            let _ = child.kill().await;
            let _ = std::fs::remove_dir_all(&dir);
        }
        Err(Error::Embedded(format!(
            "redis-server did not start: {last}"
        )))
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the child and removes its directory.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asks the kernel to SIGTERM the child if this process dies without
/// cleaning up (for example on SIGKILL), so no redis-server is orphaned.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent; it is the only call made between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

async fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(|e| Error::Embedded(e.to_string()))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::Embedded(e.to_string()))
}

/// True when a Redis answers `PING` on 127.0.0.1:`port` within 300 ms.
pub async fn ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(b"PING\r\n").await.ok()?;
        let mut buf = [0u8; 7];
        stream.read_exact(&mut buf).await.ok()?;
        Some(&buf == b"+PONG\r\n")
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(300), probe).await,
        Ok(Some(true))
    )
}
