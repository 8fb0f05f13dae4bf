//! Dead letters: entries that cannot be decoded, or were delivered too
//! often, copied with their reason to a capped stream and acknowledged;
//! listed, counted and put back into the feed on request.

use prefetch::{Redis, Result, Source};
use redis::Value;

use crate::config::*;
use crate::feed::FeedSource;

impl<P: Source + ?Sized> FeedSource<P> {
    /// Moves one entry to the dead-letter stream with `why`, and
    /// acknowledges it in the group.
    pub(crate) async fn bury(
        &self,
        stream: &str,
        entry: &str,
        fields: &[(String, Vec<u8>)],
        why: &str,
    ) -> Result<()> {
        tracing::warn!(%stream, %entry, reason = %why, "moving an entry to the dead-letter stream");
        let mut conn = self.commands.clone();
        let mut xadd = redis::cmd("XADD");
        xadd.arg(self.config.dlq_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(self.config.dlq_max_len)
            .arg("*")
            .arg("__reason")
            .arg(why)
            .arg("__stream")
            .arg(stream)
            .arg("__id")
            .arg(entry);
        for (k, v) in fields {
            xadd.arg(k).arg(v.as_slice());
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(xadd)
            .ignore()
            .cmd("XACK")
            .arg(stream)
            .arg(&self.config.group)
            .arg(entry)
            .ignore();
        let () = pipe.query_async(&mut conn).await?;
        let mut state = self.state();
        state.dead_letters += 1;
        state.last_dead = Some(format!("{entry}: {why}"));
        Ok(())
    }
}

/// Puts up to `max` dead letters back into the streams they came from.
///
/// Each goes back as a new entry with its content and its version
/// unchanged (an entry in Debezium's format, versioned by its entry id,
/// carries its original id as `__v`), so it applies only where it is newer.
/// One caveat: a delete's tombstone lasts the tombstone TTL (24 h by
/// default); a replay of an older upsert after that, with no re-prefetch in
/// between, can bring the row back until the next reconciliation. Returns
/// how many were replayed.
pub async fn replay_dead_letters(
    mut conn: Redis,
    config: &PipelineConfig,
    max: usize,
) -> Result<usize> {
    let mut replayed = 0;
    for (id, fields) in oldest_letters(&mut conn, config, max).await? {
        let field = |name: &str| field_text(&fields, name);
        // Debezium's format is versioned by the entry id: keep the original.
        let original = (field("v").is_none())
            .then(|| {
                field("__v").or_else(|| {
                    field("__id").and_then(|i| parse_entry_id(&i).ok().map(|v| v.to_string()))
                })
            })
            .flatten();
        let origin = field("__stream")
            .filter(|s| s.starts_with(&config.key_prefix()))
            .unwrap_or_else(|| config.stream(0));
        let mut xadd = redis::cmd("XADD");
        xadd.arg(&origin).arg("*");
        for (k, v) in fields.iter().filter(|(k, _)| !k.starts_with("__")) {
            xadd.arg(k).arg(v.as_slice());
        }
        if let Some(v) = original {
            xadd.arg("__v").arg(v);
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(xadd)
            .ignore()
            .cmd("XDEL")
            .arg(config.dlq_key())
            .arg(&id)
            .ignore();
        let () = pipe.query_async(&mut conn).await?;
        replayed += 1;
    }
    Ok(replayed)
}

/// Up to `max` of the oldest dead letters.
async fn oldest_letters(
    conn: &mut Redis,
    config: &PipelineConfig,
    max: usize,
) -> Result<Vec<RawItem>> {
    let items: Value = redis::cmd("XRANGE")
        .arg(config.dlq_key())
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(max.max(1))
        .query_async(conn)
        .await?;
    parse_raw(items)
}

/// The text of field `name` of an entry.
fn field_text(fields: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
}

/// Dead letters held now, newest last: (entry id, reason).
pub async fn dead_letters(
    mut conn: Redis,
    config: &PipelineConfig,
    max: usize,
) -> Result<Vec<(String, String)>> {
    Ok(oldest_letters(&mut conn, config, max)
        .await?
        .into_iter()
        .map(|(id, fields)| {
            let why = field_text(&fields, "__reason").unwrap_or_default();
            (id, why)
        })
        .collect())
}

/// The dead letters of one pipeline, for an API or a dashboard.
#[derive(Clone, Debug)]
pub struct DeadLetters {
    conn: Redis,
    config: PipelineConfig,
}

impl DeadLetters {
    /// The dead letters of the pipeline `config` names, on `conn`.
    pub fn new(conn: Redis, config: PipelineConfig) -> Self {
        Self { conn, config }
    }

    /// Up to `max` of them, oldest first: entry id and reason.
    pub async fn list(&self, max: usize) -> Result<Vec<(String, String)>> {
        dead_letters(self.conn.clone(), &self.config, max).await
    }

    /// How many there are.
    pub async fn count(&self) -> Result<u64> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("XLEN")
            .arg(self.config.dlq_key())
            .query_async(&mut conn)
            .await?)
    }

    /// Puts up to `max` back into the feed; returns how many.
    pub async fn replay(&self, max: usize) -> Result<usize> {
        replay_dead_letters(self.conn.clone(), &self.config, max).await
    }
}
