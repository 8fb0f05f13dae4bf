//! A plain SQL connection that reconnects by itself, and the catalog and
//! setup statements the source runs on it.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::error::PgError;
use crate::table::{Column, Mapping, TableInfo, ident, literal};

/// One shared `tokio-postgres` client; a closed one is replaced on next use.
#[derive(Debug)]
pub struct Sql {
    url: String,
    client: Mutex<Option<Arc<Client>>>,
}

impl Sql {
    /// A client for `url` (connects on first use).
    pub fn new(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            client: Mutex::new(None),
        }
    }

    /// The client, connecting (again) when there is none or it closed.
    pub async fn client(&self) -> Result<Arc<Client>, PgError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref()
            && !c.is_closed()
        {
            return Ok(Arc::clone(c));
        }
        let target = crate::tls::sql_target(&self.url)?;
        let client = match target.tls {
            Some(tls) => {
                let (client, connection) = tokio_postgres::connect(&target.url, tls).await?;
                tokio::spawn(drive(connection));
                client
            }
            None => {
                let (client, connection) = tokio_postgres::connect(&target.url, NoTls).await?;
                tokio::spawn(drive(connection));
                client
            }
        };
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }
}

/// Runs a connection until it ends.
async fn drive<F: std::future::Future<Output = Result<(), tokio_postgres::Error>>>(connection: F) {
    if let Err(e) = connection.await {
        tracing::debug!(error = %e, "postgres connection ended");
    }
}

/// Runs the SQL script `text` (several statements) on the database at `url`.
pub async fn run_script(url: &str, text: &str) -> Result<(), PgError> {
    Sql::new(url).client().await?.batch_execute(text).await?;
    Ok(())
}

/// `schema.table` or `table` (schema `public`), as written by the user.
pub fn split_name(name: &str) -> (String, String) {
    match name.split_once('.') {
        Some((s, t)) => (s.to_owned(), t.to_owned()),
        None => ("public".to_owned(), name.to_owned()),
    }
}

/// Whether the table exists.
pub async fn table_exists(c: &Client, schema: &str, name: &str) -> Result<bool, PgError> {
    let qualified = format!("{}.{}", ident(schema), ident(name));
    let row = c
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&qualified])
        .await?;
    Ok(row.get(0))
}

/// Creates the demo table of SPEC.md and seeds the five categories.
pub async fn create_demo_table(c: &Client, schema: &str, name: &str) -> Result<(), PgError> {
    let t = format!("{}.{}", ident(schema), ident(name));
    // Several replicas may start at once on a fresh database: two
    // concurrent `CREATE TABLE IF NOT EXISTS` can both miss the other's and
    // one then fails on the catalog's unique index. One at a time, under a
    // transaction-scoped advisory lock named after the table.
    let created = c
        .batch_execute(&format!(
            "BEGIN;
        SELECT pg_advisory_xact_lock(hashtext({lock}));
        CREATE TABLE IF NOT EXISTS {t} (
            id text PRIMARY KEY,
            name text NOT NULL,
            display_order integer NOT NULL DEFAULT 99,
            featured boolean NOT NULL DEFAULT false,
            parent_id text NOT NULL DEFAULT ''
        );
        INSERT INTO {t} (id, name, display_order, featured, parent_id) VALUES
            ('cat-001', 'Beverages', 1, true, ''),
            ('cat-002', 'Bakery', 2, true, ''),
            ('cat-003', 'Pantry Staples', 3, false, ''),
            ('cat-004', 'Frozen', 4, false, ''),
            ('cat-005', 'Specialty Cheeses', 5, false, 'cat-002')
        ON CONFLICT (id) DO NOTHING;
        COMMIT;",
            lock = literal(&format!("prefetch demo table {t}"))
        ))
        .await;
    if created.is_err() {
        // The connection is the source's own: leave no transaction open.
        let _ = c.batch_execute("ROLLBACK").await;
    }
    Ok(created?)
}

/// The table as the catalog describes it now, mapped by `mapping`, checked.
pub async fn table_info(
    c: &Client,
    schema: &str,
    name: &str,
    mapping: Option<Arc<Mapping>>,
) -> Result<TableInfo, PgError> {
    let mut info = catalog(c, schema, name).await?;
    info.mapping = mapping;
    info.validate()?;
    Ok(info)
}

/// The table as the catalog describes it now, unmapped and unchecked.
pub async fn catalog(c: &Client, schema: &str, name: &str) -> Result<TableInfo, PgError> {
    let qualified = format!("{}.{}", ident(schema), ident(name));
    let columns = c
        .query(
            "SELECT a.attname::text, a.atttypid::int8, format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a WHERE a.attrelid = $1::text::regclass AND a.attnum > 0 \
             AND NOT a.attisdropped ORDER BY a.attnum",
            &[&qualified],
        )
        .await?
        .iter()
        .map(|r| Column {
            name: r.get(0),
            type_oid: u32::try_from(r.get::<_, i64>(1)).unwrap_or(0),
            sql_type: r.get(2),
        })
        .collect();
    let key = c
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&qualified],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let info = TableInfo {
        schema: schema.to_owned(),
        name: name.to_owned(),
        columns,
        key,
        mapping: None,
    };
    Ok(info)
}

/// Creates `publication` for the table, or adds the table to it; for
/// tables declared in a tables file, with their column lists and row
/// filters (see [`publish_mapped`]).
pub async fn ensure_publication(
    c: &Client,
    publication: &str,
    tables: &[Arc<TableInfo>],
) -> Result<(), PgError> {
    // Replicas starting at once would both find it missing and both create
    // it: one at a time, under a session advisory lock named after it.
    let lock = format!("prefetch publication {publication}");
    c.execute("SELECT pg_advisory_lock(hashtext($1))", &[&lock])
        .await?;
    let done = publish(c, publication, tables).await;
    let unlocked = c
        .execute("SELECT pg_advisory_unlock(hashtext($1))", &[&lock])
        .await;
    done?;
    unlocked?;
    Ok(())
}

async fn publish(c: &Client, publication: &str, tables: &[Arc<TableInfo>]) -> Result<(), PgError> {
    let table = match tables {
        [one] if one.mapping.is_none() => one,
        _ => return publish_mapped(c, publication, tables).await,
    };
    let exists = publication_exists(c, publication).await?;
    if !exists {
        c.batch_execute(&format!(
            "CREATE PUBLICATION {} FOR TABLE {}",
            ident(publication),
            table.qualified()
        ))
        .await?;
        return Ok(());
    }
    let covered: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 \
             AND schemaname = $2 AND tablename = $3)",
            &[&publication, &table.schema, &table.name],
        )
        .await?
        .get(0);
    if !covered {
        c.batch_execute(&format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            ident(publication),
            table.qualified()
        ))
        .await?;
    }
    Ok(())
}

async fn publication_exists(c: &Client, publication: &str) -> Result<bool, PgError> {
    Ok(c.query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
        &[&publication],
    )
    .await?
    .get(0))
}

/// `"s"."t" ("c1", …) WHERE (filter)`: the table as a mapped publication
/// member.
fn member(table: &TableInfo) -> String {
    let mut out = table.qualified();
    if let Some(m) = &table.mapping {
        let cols: Vec<String> = table.selected().iter().map(|c| ident(&c.name)).collect();
        out.push_str(&format!(" ({})", cols.join(", ")));
        if let Some(f) = &m.filter {
            out.push_str(&format!(" WHERE ({f})"));
        }
    }
    out
}

/// Creates or re-points `publication` at exactly the declared tables, with
/// their column lists and row filters, in one transaction that also checks
/// that PostgreSQL will still accept `UPDATE` and `DELETE` on each: a
/// filter or a column list the replica identity does not cover would make
/// PostgreSQL refuse the application's own writes. On any refusal nothing
/// is changed, and the error names the table's declaration (and, for the
/// replica identity, the statements that would fix it).
pub(crate) async fn publish_mapped(
    c: &Client,
    publication: &str,
    tables: &[Arc<TableInfo>],
) -> Result<(), PgError> {
    let exists = publication_exists(c, publication).await?;
    c.batch_execute("BEGIN").await?;
    let outcome = publish_in_transaction(c, publication, exists, tables).await;
    match outcome {
        Ok(()) => {
            c.batch_execute("COMMIT").await?;
            Ok(())
        }
        Err(e) => {
            let _ = c.batch_execute("ROLLBACK").await;
            Err(e)
        }
    }
}

async fn publish_in_transaction(
    c: &Client,
    publication: &str,
    exists: bool,
    tables: &[Arc<TableInfo>],
) -> Result<(), PgError> {
    let origin = |t: &TableInfo| {
        t.mapping
            .as_ref()
            .map_or("", |m| m.origin.as_str())
            .to_owned()
    };
    for (i, table) in tables.iter().enumerate() {
        // One statement per table, so that a refusal names its table.
        let verb = match (i, exists) {
            (0, true) => format!("ALTER PUBLICATION {} SET TABLE", ident(publication)),
            (0, false) => format!("CREATE PUBLICATION {} FOR TABLE", ident(publication)),
            _ => format!("ALTER PUBLICATION {} ADD TABLE", ident(publication)),
        };
        if let Err(e) = c.batch_execute(&format!("{verb} {}", member(table))).await {
            return Err(PgError::Schema(format!(
                "{}: PostgreSQL refused the table's publication: {}",
                origin(table),
                PgError::from(e)
            )));
        }
    }
    for table in tables {
        let key = ident(&table.key[0]);
        let t = table.qualified();
        let probe =
            format!("UPDATE {t} SET {key} = {key} WHERE false; DELETE FROM {t} WHERE false;");
        if let Err(e) = c.batch_execute(&probe).await {
            let e = PgError::from(e);
            let advice = if e.to_string().contains("replica identity") {
                identity_advice(table)
            } else {
                String::new()
            };
            return Err(PgError::Schema(format!("{}: {e}. {advice}", origin(table))));
        }
    }
    Ok(())
}

/// What to run so that the replica identity covers a mapped table's filter
/// and column list (never run unasked: the table is the user's).
fn identity_advice(table: &TableInfo) -> String {
    let Some(m) = &table.mapping else {
        return String::new();
    };
    let t = table.qualified();
    let in_filter: Vec<&str> = table
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .filter(|c| m.filter.as_deref().is_some_and(|f| mentions(f, c)))
        .filter(|c| !table.key.iter().any(|k| k == c))
        .collect();
    if table.selected().len() == table.columns.len() {
        return format!("To publish this filter, run: ALTER TABLE {t} REPLICA IDENTITY FULL;");
    }
    let mut cols: Vec<String> = table.key.iter().map(|k| ident(k)).collect();
    cols.extend(in_filter.iter().map(|c| ident(c)));
    let index = ident(&format!("{}_prefetch_ident", table.name));
    format!(
        "The replica identity must cover the filter's columns and lie within the column list; make them NOT NULL, add them to `columns`, then run: CREATE UNIQUE INDEX {index} ON {t} ({}); ALTER TABLE {t} REPLICA IDENTITY USING INDEX {index};",
        cols.join(", ")
    )
}

/// Whether SQL text `sql` names `column` as a word.
fn mentions(sql: &str, column: &str) -> bool {
    sql.match_indices(column).any(|(at, _)| {
        let word = |c: char| c.is_alphanumeric() || c == '_';
        let before = sql[..at].chars().next_back().is_none_or(|c| !word(c));
        let after = sql[at + column.len()..]
            .chars()
            .next()
            .is_none_or(|c| !word(c));
        before && after
    })
}

/// A name PostgreSQL accepts for a slot or publication: lowercase letters,
/// digits and `_`, at most 63 bytes.
pub fn object_name(parts: &[&str]) -> String {
    let mut out: String = parts
        .join("_")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    out.truncate(63);
    out
}
