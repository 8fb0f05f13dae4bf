//! A plain SQL connection that reconnects by itself, and the catalog and
//! setup statements the source runs on it.

use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::error::PgError;
use crate::table::{Column, TableInfo, ident};

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
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "postgres connection ended");
            }
        });
        let client = Arc::new(client);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }
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
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {t} (
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
        ON CONFLICT (id) DO NOTHING;"
    ))
    .await?;
    Ok(())
}

/// The table as the catalog describes it now.
pub async fn table_info(c: &Client, schema: &str, name: &str) -> Result<TableInfo, PgError> {
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
    };
    info.validate()?;
    Ok(info)
}

/// Creates `publication` for the table, or adds the table to it.
pub async fn ensure_publication(
    c: &Client,
    publication: &str,
    table: &TableInfo,
) -> Result<(), PgError> {
    let exists: bool = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await?
        .get(0);
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
