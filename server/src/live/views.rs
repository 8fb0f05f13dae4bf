//! Which rows the live feed's clients show: the whole table (when it is
//! small), or one page each. A client is sent the row events of its rows
//! only (and every global event: stats, worker state, loads…); the hub
//! follows outside changes of the rows some client shows, no others.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use app::model::{DashboardState, Fields, LiveEvent, OpDto};

/// Which rows one client shows.
#[derive(Clone, Debug)]
pub enum ClientView {
    /// Every row of a table: the ids with this prefix (empty: every id;
    /// a table's key prefix when the cache holds several).
    Whole(Arc<str>),
    /// These ids.
    Rows(Arc<HashSet<String>>),
}

impl ClientView {
    /// The view a snapshot defines: the whole table (whose ids start with
    /// `table`), or its page's ids.
    pub fn of(state: &DashboardState, table: &str) -> Self {
        if state.page.is_none() {
            return Self::Whole(table.into());
        }
        let ids = state
            .primary
            .iter()
            .filter_map(|f| f.get(prefetch::ID_FIELD).cloned())
            .chain(state.cache.iter().map(|e| e.id.clone()))
            .collect();
        Self::Rows(Arc::new(ids))
    }

    /// Whether this client is to be sent `frame`.
    pub fn shows(&self, frame: &Frame) -> bool {
        match (self, &frame.row) {
            (_, None) => true,
            (Self::Whole(table), Some(id)) => id.starts_with(&**table),
            (Self::Rows(ids), Some(id)) => ids.contains(&**id),
        }
    }
}

/// The rows every connected client shows, counted.
#[derive(Debug, Default)]
pub struct Views {
    whole: usize,
    rows: HashMap<String, usize>,
    /// Snapshots being taken: until each is counted, its rows are not
    /// known, so the hub follows every row.
    opening: usize,
}

impl Views {
    /// Whether a client's snapshot is being taken (its rows not yet known).
    pub fn opening(&self) -> bool {
        self.opening > 0
    }

    /// Whether some client shows row `id` on a page.
    pub fn on_page(&self, id: &str) -> bool {
        self.rows.contains_key(id)
    }

    /// How many rows the clients' pages show.
    pub fn rows(&self) -> usize {
        self.rows.len()
    }

    /// Whether some client shows every row.
    pub fn whole(&self) -> bool {
        self.whole > 0
    }

    /// Every id some client shows on a page.
    pub fn ids(&self) -> Vec<String> {
        self.rows.keys().cloned().collect()
    }

    fn add(&mut self, view: &ClientView) {
        match view {
            ClientView::Whole(_) => self.whole += 1,
            ClientView::Rows(ids) => {
                for id in ids.iter() {
                    *self.rows.entry(id.clone()).or_default() += 1;
                }
            }
        }
    }

    fn remove(&mut self, view: &ClientView) {
        match view {
            ClientView::Whole(_) => self.whole = self.whole.saturating_sub(1),
            ClientView::Rows(ids) => {
                for id in ids.iter() {
                    if let Some(n) = self.rows.get_mut(id) {
                        *n -= 1;
                        if *n == 0 {
                            self.rows.remove(id);
                        }
                    }
                }
            }
        }
    }
}

/// A snapshot being taken, from before it reads anything until its view is
/// counted: meanwhile the hub follows every row, so that a change made
/// while the snapshot is read is never dropped as nobody's.
#[derive(Debug)]
pub struct Opening {
    views: Arc<Mutex<Views>>,
}

impl Opening {
    /// Counts one snapshot being taken until dropped.
    pub fn new(views: &Arc<Mutex<Views>>) -> Self {
        lock(views).opening += 1;
        Self {
            views: Arc::clone(views),
        }
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        let mut views = lock(&self.views);
        views.opening = views.opening.saturating_sub(1);
    }
}

/// A client's view, counted in [`Views`] while this lives.
#[derive(Debug)]
pub struct Watching {
    views: Arc<Mutex<Views>>,
    view: ClientView,
}

impl Watching {
    /// Counts `view` in `views` until dropped.
    pub fn new(views: &Arc<Mutex<Views>>, view: ClientView) -> Self {
        lock(views).add(&view);
        Self {
            views: Arc::clone(views),
            view,
        }
    }

    /// The view.
    pub fn view(&self) -> &ClientView {
        &self.view
    }

    /// Another view, from a fresh snapshot.
    pub fn replace(&mut self, view: ClientView) {
        let mut views = lock(&self.views);
        views.remove(&self.view);
        views.add(&view);
        self.view = view;
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        lock(&self.views).remove(&self.view);
    }
}

/// One serialised [`LiveEvent`] (the SSE framing's `data:`), shared by
/// every client.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The event's JSON (empty for a resync request).
    pub data: Arc<str>,
    /// The record a row event is about: a client showing a page is sent
    /// the row events of its rows only.
    pub row: Option<Arc<str>>,
    /// Every client is to take a fresh snapshot of its own view.
    pub resync: bool,
}

impl Frame {
    /// The event as one JSON frame.
    pub fn of(event: &LiveEvent) -> Result<Self, serde_json::Error> {
        let row = match event {
            LiveEvent::Primary {
                op: OpDto::Truncate,
                ..
            } => None,
            LiveEvent::Primary { id, .. } | LiveEvent::Cache { id, .. } => Some(id.as_str().into()),
            _ => None,
        };
        Ok(Self {
            data: serde_json::to_string(event)?.into(),
            row,
            resync: false,
        })
    }

    pub(super) fn resync() -> Self {
        Self {
            data: "".into(),
            row: None,
            resync: true,
        }
    }
}

/// What the clients were last told about one key.
#[derive(Debug, PartialEq)]
pub(super) struct Mirrored {
    pub(super) fields: Fields,
    pub(super) expires_at_ms: Option<i64>,
}

/// A lock, whoever panicked while holding it.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
