//! The live-feed hub: engine events, keyspace notifications and stats as
//! live events, each serialised once, fanned out to every SSE client.
//!
//! They become [`LiveEvent`](app::model::LiveEvent)s, sent through one
//! broadcast channel.
//!
//! Nothing here can block the engine or another client: the hub reads a
//! lossy broadcast of engine events, and clients read a lossy broadcast of
//! frames. Whoever falls behind (the hub or a client) is resynchronised with
//! a fresh snapshot instead of being waited for.
//!
//! Each client shows a view: the whole table when it is small, else one
//! page. The hub follows only the rows some client shows: row events for
//! other rows are dropped before they are serialised (the counters in the
//! stats tell about them), so that a bulk load or a million-row `UPDATE`
//! costs the hub a lookup per row and keeps nothing. A client's snapshot
//! tells the hub what it showed; the hub follows those rows from there and
//! re-reads them once, so a change made since is reported.
//!
//! With nobody watching, the hub does no Redis work: it drops the keys that
//! keyspace notifications name instead of re-reading each, and skips the
//! re-reads (resyncs, polls) that only serve clients.
//!
//! | module | what |
//! |---|---|
//! | `fanout` | [`LiveHub`]: SSE frames serialised once, one broadcast to every client |
//! | `task` | the hub task: what it follows and when it resyncs or goes idle |
//! | `views` | which rows each client shows (counted across clients), the frames sent and what clients were told |
//! | `project` | engine events projected into [`LiveEvent`](app::model::LiveEvent)s |
//! | `external` | changes made outside the app, found against a mirror of what clients saw |
//! | `keyspace` | Redis keyspace notifications: enabling them, listening on every primary |

mod external;
mod fanout;
pub mod keyspace;
mod project;
mod task;
mod views;

use app::api::ServerContext;
use app::model::ExternalWatch;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use fanout::{LiveHub, SnapshotError};
use keyspace::KeyEvent;
pub use views::Frame;
pub use views::{ClientView, Views, Watching};

/// Starts the hub task. `keys` carries keyspace notifications (`None`:
/// poll the cache every second instead).
pub fn start(
    ctx: ServerContext,
    keys: Option<mpsc::Receiver<KeyEvent>>,
    shutdown: CancellationToken,
) -> (LiveHub, tokio::task::JoinHandle<()>) {
    let (hub, follow) = LiveHub::new(ctx);
    let task = task::Task::new(hub.clone(), keys, follow);
    let join = tokio::spawn(
        task.run(shutdown)
            .instrument(tracing::info_span!("live_hub")),
    );
    (hub, join)
}

/// How outside changes are watched, for the dashboard.
pub fn watch_mode(keyspace: bool) -> ExternalWatch {
    if keyspace {
        ExternalWatch::Keyspace
    } else {
        ExternalWatch::Polling
    }
}
