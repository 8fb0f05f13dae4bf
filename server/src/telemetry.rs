//! Logging: plain lines on stdout, filtered by `RUST_LOG`.
//!
//! By default this project's crates log at `info` and third-party crates at
//! `warn` (the replication crate logs every query and a status line a
//! second at `info`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter without `RUST_LOG`: ours at `info`, everyone else's at `warn`.
pub const DEFAULT_FILTER: &str = "warn,server=info,app=info,prefetch=info,prefetch_pg=info,prefetch_cdc=info,prefetch_pipeline=info";

/// Installs the global subscriber. Safe to call more than once.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .compact()
        .try_init();
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn by_default_third_party_info_is_quiet_and_ours_is_not() {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new(DEFAULT_FILTER))
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "pg_walstream::stream", "Sent standby status update");
            tracing::warn!(target: "pg_walstream::stream", "a third-party warning");
            tracing::info!(target: "prefetch_pg::source", "streaming changes");
            tracing::info!(target: "server::boot", "listening");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("standby status"), "{text}");
        for line in ["a third-party warning", "streaming changes", "listening"] {
            assert!(text.contains(line), "{line}: {text}");
        }
    }
}
