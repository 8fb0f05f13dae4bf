//! A tables file read again while the source streams: tables added to
//! the publication and decoded from the first change PostgreSQL publishes
//! of them, tables removed no longer published nor decoded. The caller
//! (the server) snapshots the added tables and sweeps the removed ones'
//! keys; every other table streams on throughout.

use std::sync::Arc;

use prefetch::Version;

use crate::error::PgError;
use crate::heartbeat::HEARTBEAT_PREFIX;
use crate::source::{PgSource, declared};
use crate::sql;
use crate::table::TableInfo;
use crate::tables::TableSpec;

/// What [`PgSource::reload`] changed.
#[derive(Clone, Debug, Default)]
pub struct TablesChange {
    /// Tables now published and decoded. Their rows are not in Redis yet:
    /// snapshot each ([`prefetch::Engine::resnapshot`]).
    pub added: Vec<Arc<TableInfo>>,
    /// Tables no longer published nor decoded; their keys are still in
    /// Redis.
    pub removed: Vec<Arc<TableInfo>>,
    /// A position after which the stream holds no change of a removed
    /// table: once Redis holds it, none of their keys can come back.
    pub settled: Option<Version>,
}

impl TablesChange {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

impl PgSource {
    /// Keeps exactly the tables `specs` declares from now on, without
    /// stopping the stream: the tables added are checked against the
    /// database as at start and published (with their column lists and
    /// filters) in one transaction that also drops the removed ones; a
    /// refusal changes nothing. A table declared differently than when it
    /// was added is refused (a running source adds and removes tables; a
    /// changed key, column list or filter needs a restart), and so is a
    /// source started without a tables file.
    pub async fn reload(&self, specs: &[TableSpec]) -> Result<TablesChange, PgError> {
        let Some(prefix) = self.declared_prefix() else {
            return Err(PgError::Schema(
                "this server was started without a tables file; restart it with --config to hold several tables".into(),
            ));
        };
        let client = self.shared.sql.client().await?;
        let wanted = declared(&client, specs, &prefix).await?;
        let current = self.shared.tables();
        for w in &wanted {
            if let Some(c) = current.iter().find(|c| c.label() == w.label())
                && !same_declaration(c, w)
            {
                return Err(PgError::Schema(format!(
                    "{}: table {} is declared differently than when it was added; a running server adds and removes tables, restart it to change one",
                    origin(w),
                    w.label()
                )));
            }
        }
        let kept =
            |t: &TableInfo, among: &[Arc<TableInfo>]| among.iter().any(|o| o.label() == t.label());
        let added: Vec<Arc<TableInfo>> = wanted
            .iter()
            .filter(|w| !kept(w, &current))
            .cloned()
            .collect();
        let removed: Vec<Arc<TableInfo>> = current
            .iter()
            .filter(|c| !kept(c, &wanted))
            .cloned()
            .collect();
        if added.is_empty() && removed.is_empty() {
            return Ok(TablesChange::default());
        }
        let next: Vec<Arc<TableInfo>> = current
            .iter()
            .filter(|c| kept(c, &wanted))
            .chain(&added)
            .cloned()
            .collect();
        // The added tables are decoded before PostgreSQL publishes their
        // first change; the removed ones until it stops publishing them.
        let mut during = current.to_vec();
        during.extend(added.iter().cloned());
        self.shared.replace_tables(during);
        if let Err(e) = sql::publish_mapped(&client, &self.shared.publication, &next).await {
            self.shared.replace_tables(current.to_vec());
            return Err(e);
        }
        self.shared.replace_tables(next.clone());
        self.shared.set_detail(
            if next.len() > 1 { "tables" } else { "table" },
            next.iter()
                .map(|t| t.label())
                .collect::<Vec<_>>()
                .join(", "),
        );
        let settled = if removed.is_empty() {
            None
        } else {
            Some(mark(&client).await?)
        };
        Ok(TablesChange {
            added,
            removed,
            settled,
        })
    }
}

/// A transactional message through the slot, and the position right
/// after it: every change decoded before the tables were switched is
/// below it.
async fn mark(client: &tokio_postgres::Client) -> Result<Version, PgError> {
    client
        .execute(
            "SELECT pg_logical_emit_message(true, $1, $2)",
            &[&HEARTBEAT_PREFIX, &now_ms()],
        )
        .await?;
    let lsn: i64 = client
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
        .await?
        .get(0);
    Ok(Version::new(lsn.unsigned_abs(), 0))
}

fn now_ms() -> String {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis().to_string())
        .unwrap_or_default()
}

fn origin(t: &TableInfo) -> &str {
    t.mapping.as_ref().map_or("", |m| m.origin.as_str())
}

/// The same key, columns, names and filter (wherever in the file).
fn same_declaration(a: &TableInfo, b: &TableInfo) -> bool {
    match (&a.mapping, &b.mapping) {
        (Some(x), Some(y)) => {
            x.template == y.template
                && x.columns == y.columns
                && x.rename == y.rename
                && x.filter == y.filter
                && x.json == y.json
        }
        (x, y) => x.is_none() && y.is_none(),
    }
}
