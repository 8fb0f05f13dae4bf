//! Snapshot windows: while one is open, every change the guard applies is
//! also logged, so that a snapshot taken after it opened never writes a
//! key a newer change reached before something removed it (see the
//! guard's library for the mechanism).

use std::time::Duration;

use super::PrefetchCache;
use crate::cluster::Connection;
use crate::error::Result;

impl<C: Connection> PrefetchCache<C> {
    /// Opens a snapshot window for `lease` (see [`SnapshotWindow`]): from
    /// now until it closes, every change the guard applies is also logged,
    /// so that a snapshot taken after this call never writes a key that a
    /// newer change reached before something removed it (an invalidate, a
    /// clear, a `DEL` from outside, expiry, eviction). Snapshot writes
    /// ([`write_snapshot`](Self::write_snapshot)) are refused outside a
    /// window.
    pub async fn open_window(&self, lease: Duration) -> Result<SnapshotWindow<C>> {
        let guard = self.guard();
        self.on_every_window(|keys, _| guard.window(keys, true, lease))
            .await?;
        let renewer = {
            let cache = self.clone();
            tokio::spawn(async move {
                let every = (lease / 3).max(Duration::from_millis(10));
                loop {
                    tokio::time::sleep(every).await;
                    let guard = cache.guard();
                    let renewed = cache
                        .on_every_window(|keys, _| guard.window(keys, false, lease))
                        .await;
                    if let Err(e) = renewed {
                        tracing::warn!(error = %e, "cannot renew the snapshot window");
                    }
                }
            })
        };
        Ok(SnapshotWindow {
            cache: self.clone(),
            renewer: Some(renewer),
        })
    }
}

/// An open snapshot window ([`PrefetchCache::open_window`]): renewed in the
/// background until [`close`](Self::close)d or dropped (a dropped window
/// stops being renewed and lapses at the end of its lease).
#[must_use = "a window closes when dropped"]
pub struct SnapshotWindow<C: Connection> {
    cache: PrefetchCache<C>,
    renewer: Option<tokio::task::JoinHandle<()>>,
}

impl<C: Connection> SnapshotWindow<C> {
    /// Closes the window: writes stop being logged once no other window is
    /// open on this cache.
    pub async fn close(mut self) -> Result<()> {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
        let guard = self.cache.guard();
        self.cache
            .on_every_window(|keys, _| guard.close(keys))
            .await
    }
}

impl<C: Connection> Drop for SnapshotWindow<C> {
    fn drop(&mut self) {
        if let Some(renewer) = self.renewer.take() {
            renewer.abort();
        }
    }
}

impl<C: Connection> std::fmt::Debug for SnapshotWindow<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotWindow")
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}
