//! The entry format: one whole source transaction per stream entry.

use std::time::{Duration, UNIX_EPOCH};

use prefetch::{Change, ChangeKind, Fields, Result, Transaction, Version};
use serde::{Deserialize, Serialize};

use prefetch_cdc::{DecodeError, DecodeOptions, Decoded, decode_entry};

/// One change as the feed carries it.
#[derive(Serialize, Deserialize)]
struct WireChange {
    id: String,
    op: String,
    v: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<Fields>,
}

/// A transaction as the fields of one entry.
pub fn encode_tx(tx: &Transaction) -> Vec<(String, String)> {
    let changes: Vec<WireChange> = tx
        .changes
        .iter()
        .map(|c| WireChange {
            id: c.id.clone(),
            op: match c.kind {
                ChangeKind::Upsert(_) => "u",
                ChangeKind::Delete => "d",
                ChangeKind::Truncate => "t",
            }
            .into(),
            v: c.version.to_string(),
            after: c.kind.fields().map(|f| (**f).clone()),
        })
        .collect();
    let ts = tx
        .committed_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    vec![
        ("v".into(), tx.position.to_string()),
        ("ts".into(), ts.to_string()),
        (
            "changes".into(),
            serde_json::to_string(&changes).unwrap_or_else(|_| "[]".into()),
        ),
    ]
}

/// An entry back into a transaction: the feed's own format, or a Debezium
/// entry versioned by its entry id.
///
/// ```
/// use prefetch::{Change, Transaction, Version};
/// use prefetch_pipeline::{decode_tx, encode_tx};
///
/// let v = Version::new(42, 1);
/// let tx = Transaction::new(v, vec![Change::delete("cat-001", v)]);
/// let entry: Vec<(String, Vec<u8>)> = encode_tx(&tx)
///     .into_iter()
///     .map(|(k, v)| (k, v.into_bytes()))
///     .collect();
/// let back = decode_tx(Version::new(1, 0), &entry, &Default::default()).unwrap();
/// assert_eq!(back.position, v);
/// assert_eq!(back.changes, tx.changes);
/// ```
pub fn decode_tx(
    entry_id: Version,
    entry: &[(String, Vec<u8>)],
    debezium: &DecodeOptions,
) -> Result<Transaction, DecodeError> {
    let field = |name: &str| entry.iter().find(|(k, _)| k == name).map(|(_, v)| v);
    let (Some(v), Some(changes)) = (field("v"), field("changes")) else {
        // A replayed Debezium entry carries its original version as `__v`.
        let (entry_id, entry) = match field("__v") {
            Some(v) => (
                String::from_utf8_lossy(v)
                    .parse::<Version>()
                    .map_err(|_| DecodeError("`__v` is not a version".into()))?,
                entry
                    .iter()
                    .filter(|(k, _)| k != "__v")
                    .cloned()
                    .collect::<Vec<_>>(),
            ),
            None => (entry_id, entry.to_vec()),
        };
        let entry = entry.as_slice();
        let change = match decode_entry(entry, debezium)? {
            Decoded::Upsert { id, fields } => Some(Change::upsert(id, fields, entry_id)),
            Decoded::Delete { id } => Some(Change::delete(id, entry_id)),
            Decoded::Truncate { prefix } => Some(Change::truncate_within(prefix, entry_id)),
            Decoded::Skip(_) => None,
        };
        let mut tx = Transaction::new(entry_id, change.into_iter().collect());
        tx.committed_at =
            (UNIX_EPOCH + Duration::from_millis(entry_id.commit)).min(tx.committed_at);
        return Ok(tx);
    };
    let version = |s: &str| {
        s.parse::<Version>()
            .map_err(|_| DecodeError(format!("'{s}' is not a version")))
    };
    let position = version(&String::from_utf8_lossy(v))?;
    let wire: Vec<WireChange> = serde_json::from_slice(changes)
        .map_err(|e| DecodeError(format!("changes are not the feed's JSON: {e}")))?;
    let changes = wire
        .into_iter()
        .map(|c| {
            let v = version(&c.v)?;
            Ok(match (c.op.as_str(), c.after) {
                ("u", Some(after)) => Change::upsert(c.id, after, v),
                ("d", _) => Change::delete(c.id, v),
                ("t", _) => Change::truncate(v),
                (op, _) => return Err(DecodeError(format!("unknown op '{op}'"))),
            })
        })
        .collect::<Result<Vec<_>, DecodeError>>()?;
    let mut tx = Transaction::new(position, changes);
    if let Some(ms) = field("ts").and_then(|t| String::from_utf8_lossy(t).parse::<u64>().ok()) {
        tx.committed_at = (UNIX_EPOCH + Duration::from_millis(ms)).min(tx.committed_at);
    }
    Ok(tx)
}
