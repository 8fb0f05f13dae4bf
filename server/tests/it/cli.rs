//! The real binary: start-up lines, the one-line error when Redis is
//! unreachable (and the guide's section each refusal names), the embedded
//! Redis, and a prompt, clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prefetch::testing::TestRedis;

use crate::common::free_port;

fn server(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_server"));
    cmd.args(args)
        .env_remove("REDIS_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Reads stdout lines on a thread until one contains `needle`.
fn wait_for_line(child: &mut Child, needle: &str, timeout: Duration) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut lines = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line.contains(needle);
                lines.push(line);
                if done {
                    return lines;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {timeout:?}; got {lines:#?}");
}

fn sigterm_and_wait(child: &mut Child) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    crate::common::sigterm(child.id());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return (status, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn redis_answers(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok()
}

#[test]
fn unreachable_redis_is_a_one_line_error_and_exit_code_1() {
    let dead = free_port();
    let out = server(&["--redis-port", &dead.to_string(), "--port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr:?}");
    assert!(
        lines[0].starts_with("error: cannot reach Redis at redis://127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        lines[0].ends_with("(see docs/troubleshooting.md#cannot-reach-redis)"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
}

/// The one line a refused start prints, and its exit code.
fn refusal(args: &[&str]) -> String {
    let out = server(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "exactly one line: {stderr:?}");
    assert!(!stderr.contains("panicked"));
    stderr
}

/// Each refusal names its section of the troubleshooting guide, and the
/// section is there.
#[test]
fn a_refused_start_names_the_section_of_the_guide_that_explains_it() {
    let redis = TestRedis::spawn_own(false);
    let dead_pg = format!("postgres://postgres@127.0.0.1:{}/x", free_port());
    let guide = include_str!("../../../docs/troubleshooting.md");
    for (args, anchor) in [
        (
            vec!["--redis-url", &redis.url, "--primary", &dead_pg],
            "cannot-reach-postgresql",
        ),
        (
            vec![
                "--redis-url",
                &redis.url,
                "--primary",
                &dead_pg,
                "--config",
                "/nonexistent/tables.toml",
            ],
            "the-tables-file-is-refused",
        ),
        (
            vec!["--redis-url", &redis.url, "--primary", "nonsense"],
            "flags-that-do-not-go-together",
        ),
    ] {
        let mut args = args;
        args.extend(["--port", "0"]);
        let line = refusal(&args);
        let tail = format!("(see docs/troubleshooting.md#{anchor})");
        assert!(line.trim_end().ends_with(&tail), "{args:?}: {line}");
        let heading = anchor.replace('-', " ");
        assert!(
            guide.lines().any(|l| l
                .strip_prefix("### ")
                .is_some_and(|h| h.to_lowercase().replace('-', " ") == heading)),
            "no section {anchor}"
        );
    }
}

#[test]
fn start_up_prints_three_lines_and_sigterm_exits_0_within_2_seconds() {
    let redis = TestRedis::spawn_own(false);
    let port = free_port().to_string();
    let mut child = server(&[
        "--redis-url",
        &redis.url,
        "--port",
        &port,
        "--cache-prefix",
        "cli:test:",
        "--ttl-seconds",
        "120",
        "--primary-latency-ms",
        "5",
    ])
    .spawn()
    .unwrap();
    let lines = wait_for_line(&mut child, "sync worker running", Duration::from_secs(20));
    let text = lines.join("\n");
    assert!(
        text.contains(&format!("listening on http://127.0.0.1:{port}")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "Using Redis at {} with cache prefix 'cli:test:' and TTL 120s",
            redis.url
        )),
        "{text}"
    );
    assert!(text.contains("Prefetched 5 records in "), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "no colour codes when not on a terminal"
    );

    // An open live stream must not hold shutdown up.
    let mut sse =
        std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap())).unwrap();
    use std::io::Write;
    sse.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));

    let (status, took) = sigterm_and_wait(&mut child);
    assert_eq!(status.code(), Some(0));
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

#[test]
fn the_embedded_redis_starts_with_the_server_and_stops_with_it() {
    let port = free_port().to_string();
    let mut child = server(&["--embedded-redis", "--port", &port])
        .spawn()
        .unwrap();
    let lines = wait_for_line(&mut child, "sync worker running", Duration::from_secs(20));
    let text = lines.join("\n");
    let at = text
        .find("started a private redis-server")
        .unwrap_or_else(|| panic!("{text}"));
    let redis_port: u16 = text[at..]
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("port in the message");
    assert!(redis_answers(redis_port));
    let (status, _) = sigterm_and_wait(&mut child);
    assert_eq!(status.code(), Some(0));
    assert!(
        !redis_answers(redis_port),
        "the private redis-server stops with the server"
    );
}
