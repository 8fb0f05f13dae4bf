//! [`PgEditor`]: the demo's view and edits of the table, as SQL: what the
//! reference API's mutations and the dashboard's primary column need
//! ([`Primary`]). The engine never uses it; the changes it makes reach
//! Redis through the replication stream like anyone else's.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures::FutureExt;
use prefetch::{BoxFuture, Primary, Record, Result, validate_field, validate_id};
use tokio_postgres::types::ToSql;

use crate::error::PgError;
use crate::shared::{Shared, undefined_column};
use crate::table::{TableInfo, ident};

/// Rows up to which the primary's count is exact (above: the planner's
/// estimate, or "more than this").
const EXACT_COUNT_LIMIT: u64 = 100_000;

/// Whether PostgreSQL refused a value as no value of its column's type
/// (SQLSTATE class 22: invalid text representation, out of range…).
/// A write the role may not make (`insufficient_privilege`) is a primary
/// this server cannot edit (409, with PostgreSQL's words); other errors as
/// usual.
fn write_error(e: tokio_postgres::Error) -> prefetch::Error {
    match e.as_db_error() {
        Some(db) if db.code().code() == "42501" => prefetch::Error::ReadOnly(format!(
            "PostgreSQL refused this server's role the write ({})",
            db.message()
        )),
        _ => PgError::from(e).into(),
    }
}

fn not_of_the_type(e: &PgError) -> bool {
    matches!(e, PgError::Sql(e) if e.as_db_error().is_some_and(|d| d.code().code().starts_with("22")))
}

/// The table, read and written with SQL. Made by
/// [`PgSource::editor`](crate::PgSource::editor).
#[derive(Debug, Clone)]
pub struct PgEditor {
    pub(crate) shared: Arc<Shared>,
    /// Which of the source's tables (`schema.name`; `None`: the first, the
    /// default view). Named, not numbered: tables come and go.
    pub(crate) label: Option<String>,
}

impl PgEditor {
    /// The table this editor shows, as last read from the catalog.
    fn table(&self) -> Arc<TableInfo> {
        let tables = self.shared.tables();
        let named = self
            .label
            .as_deref()
            .and_then(|l| tables.iter().find(|t| t.label() == l));
        Arc::clone(named.unwrap_or(&tables[0]))
    }

    /// Runs `query` (built for the table as it is now) and reads its rows
    /// as records; a column dropped meanwhile makes it read the catalog
    /// again and retry once.
    async fn select<F>(&self, query: F, params: &[String]) -> Result<Vec<Record>, PgError>
    where
        F: Fn(&TableInfo) -> String,
    {
        match self.try_select(&query, params).await {
            Err(e) if undefined_column(&e) => {
                self.shared.refresh_table().await?;
                self.try_select(&query, params).await
            }
            other => other,
        }
    }

    async fn try_select<F>(&self, query: &F, params: &[String]) -> Result<Vec<Record>, PgError>
    where
        F: Fn(&TableInfo) -> String,
    {
        let table = self.table();
        let client = self.shared.sql.client().await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let rows = client.query(&query(&table), &params).await?;
        Ok(rows
            .iter()
            .filter_map(|r| Self::row_record(&table, r))
            .collect())
    }

    /// Records after the key of `after`, in key order.
    async fn page(&self, after: Option<&str>, limit: usize) -> Result<Vec<Record>> {
        let table = self.table();
        let after = match after {
            Some(id) => match table.key_of(id) {
                Ok(parts) => Some(parts),
                // Not an id of this table: sort it as the key's first part.
                Err(_) => Some(vec![id.to_owned()]),
            },
            None => None,
        };
        let limit = if limit == usize::MAX {
            "ALL".to_owned()
        } else {
            limit.to_string()
        };
        let params = after.clone().unwrap_or_default();
        let records = self
            .select(
                |t| {
                    let order = t.key_order();
                    let select = match &after {
                        Some(parts) => t.select_where(&t.key_after(1, parts.len())),
                        None => t.select_text(),
                    };
                    format!("{select} ORDER BY {order} LIMIT {limit}")
                },
                &params,
            )
            .await?;
        Ok(records)
    }

    /// The records with these ids. An id that is no value of the key's
    /// type (a search for `abc` on a bigint key, a key someone wrote by
    /// hand) is no record: it is skipped, not an error for the others.
    async fn lookup(&self, ids: &[String]) -> Result<Vec<Record>> {
        let table = self.table();
        let keys: Vec<Vec<String>> = ids.iter().filter_map(|id| table.key_of(id).ok()).collect();
        match self.lookup_keys(&keys).await {
            Err(e) if not_of_the_type(&e) => {
                let mut out = Vec::new();
                for key in &keys {
                    match self.lookup_keys(std::slice::from_ref(key)).await {
                        Ok(found) => out.extend(found),
                        Err(e) if not_of_the_type(&e) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                let order: HashMap<&str, usize> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| (id.as_str(), i))
                    .collect();
                out.sort_by_key(|r| r.id().and_then(|id| order.get(id).copied()));
                Ok(out)
            }
            other => Ok(other?),
        }
    }

    async fn lookup_keys(&self, keys: &[Vec<String>]) -> Result<Vec<Record>, PgError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let width = self.table().key.len();
        let params: Vec<String> = keys.iter().flatten().cloned().collect();
        self.select(
            |t| {
                let order = t.key_order();
                let any: Vec<String> = (0..params.len() / width)
                    .map(|i| format!("({})", t.key_predicate(1 + i * width)))
                    .collect();
                let any = format!("({})", any.join(" OR "));
                format!("{} ORDER BY {order}", t.select_where(&any))
            },
            &params,
        )
        .await
    }

    /// The planner's estimate for a large table, an exact count for a
    /// small one (up to [`EXACT_COUNT_LIMIT`] rows, counting is cheap).
    async fn rows(&self) -> Result<prefetch::RowCount> {
        let table = self.table();
        let client = self.shared.sql.client().await?;
        let estimate: Option<f32> = client
            .query_opt(
                "SELECT reltuples FROM pg_class WHERE oid = $1::text::regclass",
                &[&table.qualified()],
            )
            .await
            .map_err(PgError::from)?
            .map(|r| r.get(0));
        if let Some(estimate) = estimate.filter(|e| *e > EXACT_COUNT_LIMIT as f32) {
            return Ok(prefetch::RowCount {
                rows: estimate as u64,
                exact: false,
            });
        }
        // Counted up to the limit only: a large table never analysed (no
        // estimate yet) costs no full scan per page.
        let counted: i64 = client
            .query_one(
                &format!(
                    "SELECT count(*) FROM (SELECT 1 FROM {} LIMIT {}) AS s",
                    table.from_clause(),
                    EXACT_COUNT_LIMIT + 1
                ),
                &[],
            )
            .await
            .map_err(PgError::from)?
            .get(0);
        let counted = counted.unsigned_abs();
        Ok(prefetch::RowCount {
            rows: counted.max(estimate.unwrap_or(0.0) as u64),
            exact: counted <= EXACT_COUNT_LIMIT,
        })
    }

    /// A table declared in a tables file is edited in PostgreSQL, where its
    /// projection, filter and names are the user's own; the demo's editor
    /// edits the demo's table only.
    fn editable(table: &TableInfo) -> Result<()> {
        if table.mapping.is_some() {
            return Err(prefetch::Error::ReadOnly(format!(
                "{} is declared in a tables file: change its rows in PostgreSQL",
                table.label()
            )));
        }
        Ok(())
    }

    fn returning(table: &TableInfo) -> String {
        table.select_list()
    }

    fn row_record(table: &TableInfo, row: &tokio_postgres::Row) -> Option<Record> {
        let values = (0..table.selected().len()).map(|i| row.get(i)).collect();
        table.record(values)
    }

    async fn update(&self, id: &str, field: &str, value: &str) -> Result<Record> {
        let id = validate_id(id)?;
        validate_field(field, value)?;
        let table = self.table();
        Self::editable(&table)?;
        let column = table
            .column(field)
            .ok_or_else(|| prefetch::Error::InvalidField(format!("unknown column '{field}'")))?;
        if table.key.iter().any(|k| k == field) {
            return Err(prefetch::Error::InvalidField(format!(
                "'{field}' is part of the primary key and cannot be changed"
            )));
        }
        let key = table.key_of(id)?;
        let query = format!(
            "UPDATE {} SET {} = CAST($1::text AS {}) WHERE {} RETURNING {}",
            table.qualified(),
            ident(field),
            column.sql_type,
            table.key_predicate(2),
            Self::returning(&table)
        );
        let value = value.to_owned();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&value];
        params.extend(key.iter().map(|k| k as &(dyn ToSql + Sync)));
        let client = self.shared.sql.client().await?;
        let row = client
            .query_opt(&query, &params)
            .await
            .map_err(write_error)?
            .ok_or_else(|| prefetch::Error::NotFound(id.to_owned()))?;
        Self::row_record(&table, &row).ok_or_else(|| prefetch::Error::NotFound(id.to_owned()))
    }

    async fn insert(&self, record: Record) -> Result<Record> {
        let table = self.table();
        Self::editable(&table)?;
        let mut fields = record.into_fields();
        if let Some(raw) = fields.get(prefetch::ID_FIELD).cloned() {
            let id = validate_id(&raw)?.to_owned();
            if table.synthetic_id() {
                // The id names the key: its parts fill the key columns.
                let parts = table.key_of(&id).map_err(|_| {
                    prefetch::Error::InvalidId(format!(
                        "'{id}' does not name the {} key columns",
                        table.key.len()
                    ))
                })?;
                fields.remove(prefetch::ID_FIELD);
                for (k, v) in table.key.iter().zip(parts) {
                    fields.entry(k.clone()).or_insert(v);
                }
            } else {
                fields.insert(prefetch::ID_FIELD.to_owned(), id);
            }
        }
        let mut names = Vec::new();
        let mut casts = Vec::new();
        let mut values: Vec<String> = Vec::new();
        for (name, value) in &fields {
            let column = table
                .column(name)
                .ok_or_else(|| prefetch::Error::InvalidField(format!("unknown column '{name}'")))?;
            if name != prefetch::ID_FIELD {
                validate_field(name, value)?;
            }
            names.push(ident(name));
            values.push(value.clone());
            casts.push(format!(
                "CAST(${}::text AS {})",
                values.len(),
                column.sql_type
            ));
        }
        let query = format!(
            "INSERT INTO {} ({}) VALUES ({}) RETURNING {}",
            table.qualified(),
            names.join(", "),
            casts.join(", "),
            Self::returning(&table)
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            values.iter().map(|v| v as &(dyn ToSql + Sync)).collect();
        let client = self.shared.sql.client().await?;
        let row = match client.query_one(&query, &params).await {
            Ok(row) => row,
            Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "23505") => {
                let id = fields.get(prefetch::ID_FIELD).cloned().unwrap_or_else(|| {
                    let parts: Vec<&str> = table
                        .key
                        .iter()
                        .filter_map(|k| fields.get(k).map(String::as_str))
                        .collect();
                    table.id_of(&parts)
                });
                return Err(prefetch::Error::AlreadyExists(id));
            }
            Err(e) => return Err(write_error(e)),
        };
        Self::row_record(&table, &row)
            .ok_or_else(|| prefetch::Error::InvalidId("the new row has no key".into()))
    }

    /// One record of the table its id belongs to, for
    /// [`Source::fetch`](prefetch::Source::fetch): read first, then a
    /// message through the slot. Every commit the read saw lies before the
    /// message, every commit it missed either before it too (so applied
    /// once the cache reaches the message) or after it, so the message's
    /// LSN bounds the record from both sides.
    pub(crate) async fn fetch_one(&self, id: &str) -> Result<prefetch::Fetched> {
        let tables = self.shared.tables();
        let table = tables
            .iter()
            .filter(|t| id.starts_with(t.id_prefix()))
            .max_by_key(|t| t.id_prefix().len());
        let Some(table) = table else {
            // No table of the cache's holds such ids (one removed since).
            return Ok(prefetch::Fetched::absent());
        };
        let editor = PgEditor {
            shared: Arc::clone(&self.shared),
            label: Some(table.label()),
        };
        self.shared.reads.fetch_add(1, Relaxed);
        let found = editor.lookup(&[id.to_owned()]).await?;
        let Some(record) = found.into_iter().find(|r| r.id() == Some(id)) else {
            return Ok(prefetch::Fetched::absent());
        };
        let client = self.shared.sql.client().await?;
        let lsn: i64 = client
            .query_one(
                "SELECT (pg_logical_emit_message(true, $1, '') - '0/0')::int8",
                &[&crate::HEARTBEAT_PREFIX],
            )
            .await
            .map_err(PgError::from)?
            .get(0);
        let at = prefetch::Version::new(lsn.unsigned_abs(), 0);
        Ok(prefetch::Fetched {
            record: Some(record),
            wait_for: at,
            version: at,
        })
    }

    /// PostgreSQL's WAL write position: asked after a commit returned,
    /// it is at or after that commit's end, where the change stream
    /// positions the transaction.
    async fn wal_position(&self) -> Result<Option<prefetch::Version>> {
        let client = self.shared.sql.client().await?;
        let lsn: i64 = client
            .query_one("SELECT (pg_current_wal_lsn() - '0/0')::int8", &[])
            .await
            .map_err(PgError::from)?
            .get(0);
        Ok(Some(prefetch::Version::new(lsn.unsigned_abs(), 0)))
    }

    async fn remove(&self, id: &str) -> Result<String> {
        let id = validate_id(id)?;
        let table = self.table();
        Self::editable(&table)?;
        let key = table.key_of(id)?;
        let query = format!(
            "DELETE FROM {} WHERE {}",
            table.qualified(),
            table.key_predicate(1)
        );
        let params: Vec<&(dyn ToSql + Sync)> =
            key.iter().map(|k| k as &(dyn ToSql + Sync)).collect();
        let client = self.shared.sql.client().await?;
        let deleted = client.execute(&query, &params).await.map_err(write_error)?;
        if deleted == 0 {
            return Err(prefetch::Error::NotFound(id.to_owned()));
        }
        Ok(id.to_owned())
    }
}

impl Primary for PgEditor {
    fn records_after<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Record>>> {
        self.page(after, limit).boxed()
    }

    fn records_for<'a>(&'a self, ids: &'a [String]) -> BoxFuture<'a, Result<Vec<Record>>> {
        self.lookup(ids).boxed()
    }

    fn count(&self) -> BoxFuture<'_, Result<prefetch::RowCount>> {
        self.rows().boxed()
    }

    fn update_field<'a>(
        &'a self,
        id: &'a str,
        field: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<Record>> {
        self.update(id, field, value).boxed()
    }

    fn add(&self, record: Record) -> BoxFuture<'_, Result<Record>> {
        self.insert(record).boxed()
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<String>> {
        self.remove(id).boxed()
    }

    fn commit_position(&self) -> BoxFuture<'_, Result<Option<prefetch::Version>>> {
        self.wal_position().boxed()
    }

    fn reads(&self) -> u64 {
        self.shared.reads.load(Relaxed)
    }

    fn reset_reads(&self) {
        self.shared.reads.store(0, Relaxed);
    }

    fn columns(&self) -> Option<Vec<String>> {
        Some(self.table().field_names())
    }

    fn tables(&self) -> Vec<String> {
        let tables = self.shared.tables();
        if tables.len() < 2 {
            return Vec::new();
        }
        tables.iter().map(|t| t.label()).collect()
    }

    fn view_of(&self, name: &str) -> Option<Arc<dyn Primary>> {
        let tables = self.shared.tables();
        let table = tables.iter().find(|t| t.label() == name)?;
        Some(Arc::new(PgEditor {
            shared: Arc::clone(&self.shared),
            label: Some(table.label()),
        }))
    }

    fn id_prefix(&self) -> String {
        self.table().id_prefix().to_owned()
    }

    fn read_latency(&self) -> Duration {
        Duration::from_micros(self.shared.read_latency_us.load(Relaxed))
    }
}
