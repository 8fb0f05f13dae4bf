//! A durable change feed in Redis Streams shared by several replicas.
//!
//! One replica at a time holds the source of truth under a [`Lease`] and
//! [publishes](run_leader) its committed transactions into partition
//! streams; every replica applies from one consumer group through a
//! [`FeedSource`]. The source hears that a transaction is durable only once
//! the feed holds it, and a replica that dies leaves its unacknowledged
//! entries to the others.
//!
//! # Keys (`<p>` is the pipeline name; it is every key's hash tag, so a
//! Redis Cluster keeps the whole pipeline on one node)
//!
//! | key | what |
//! |---|---|
//! | `prefetch:<p>:cdc:{pNN}` | partition stream `NN`, one entry per source transaction |
//! | `prefetch:<p>:leader` | the publishing lease: the holder's name, with a TTL |
//! | `prefetch:<p>:published` | the position of the last transaction published |
//! | `prefetch:<p>:resync` | how often the publisher asked every replica for a fresh snapshot |
//! | `prefetch:<p>:resync:covered` | the count the last snapshot (of any replica) covered |
//! | `prefetch:<p>:dlq` | dead letters (capped), each with its reason and origin |
//!
//! # Entry format
//!
//! An entry holds one whole transaction, so that whichever replica applies
//! it applies all of it in one atomic call: `v` (its position, the
//! [`Version`](prefetch::Version) text form), `ts` (commit time, Unix milliseconds), `changes`
//! (a JSON array of `{"id", "op": "u"|"d"|"t", "v", "after": {…}}`). A
//! group member also accepts entries in Debezium Server's formats (see
//! [`prefetch_cdc::decode`]), versioned by their entry id, so the same
//! group can apply what a Debezium sink writes.
//!
//! | module | what |
//! |---|---|
//! | `config` | [`PipelineConfig`], key names, entry ids |
//! | `wire` | the entry format: [`encode_tx`], [`decode_tx`] |
//! | `lease` | [`Lease`]: who publishes |
//! | `publish` | [`run_leader`], [`publish`], [`trim`] |
//! | `feed` | [`FeedSource`]: a replica's member of the group, as its engine's source |
//! | `group` | reading the group: new and pending entries, claims, delivery counts |
//! | `tail` | every published transaction announced on every replica |
//! | `dead_letters` | [`DeadLetters`]: entries that could not be applied, and their replay |
//! | `turn` | [`wait_for_turn`]: who loads the cache first |

#![warn(missing_docs)]

mod config;
mod dead_letters;
mod feed;
mod group;
mod lease;
mod publish;
mod tail;
mod turn;
mod wire;

pub use config::PipelineConfig;

/// The Redis commands a replica of the pipeline sends besides its cache's
/// ([`prefetch::CACHE_COMMANDS`]).
///
/// The partition streams and their group,
/// the lease and the counters (two of them updated by Lua scripts, run with
/// `EVALSHA` and loaded with `SCRIPT LOAD`), the dead letters.
pub const REDIS_COMMANDS: &[&str] = &[
    "xadd",
    "xread",
    "xreadgroup",
    "xack",
    "xautoclaim",
    "xpending",
    "xgroup|create",
    "xinfo|stream",
    "xinfo|groups",
    "xtrim",
    "xlen",
    "xrange",
    "xdel",
    "incr",
    "evalsha",
    "script|load",
];
pub use dead_letters::{DeadLetters, dead_letters, replay_dead_letters};
pub use feed::FeedSource;
pub use lease::{Lease, holder_name};
pub use publish::{SourceFactory, publish, run_leader, trim};
pub use turn::wait_for_turn;
pub use wire::{decode_tx, encode_tx};

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use prefetch::{Change, Fields, Transaction, Version};

    use super::*;
    use prefetch_cdc::DecodeOptions;

    #[test]
    fn transactions_round_trip_through_entries() {
        let v = Version::new(u64::MAX - 3, 2);
        let fields: Fields = [("id", "a"), ("name", "x")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let tx = Transaction::new(
            v,
            vec![
                Change::upsert("a", fields, Version::new(u64::MAX - 3, 0)),
                Change::delete("b", Version::new(u64::MAX - 3, 1)),
                Change::truncate(v),
            ],
        );
        let entry: Vec<(String, Vec<u8>)> = encode_tx(&tx)
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        let back = decode_tx(Version::ZERO, &entry, &DecodeOptions::default()).unwrap();
        assert_eq!(back.position, tx.position);
        assert_eq!(back.changes, tx.changes);
        let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(ms(back.committed_at), ms(tx.committed_at));
    }

    #[test]
    fn a_debezium_entry_in_the_group_is_versioned_by_its_id() {
        let entry = vec![(
            r#"{"id":"a"}"#.to_owned(),
            br#"{"after":{"id":"a","n":1},"op":"c"}"#.to_vec(),
        )];
        let tx = decode_tx(
            Version::new(1_700_000_000_000, 3),
            &entry,
            &DecodeOptions::default(),
        )
        .unwrap();
        assert_eq!(tx.position, Version::new(1_700_000_000_000, 3));
        assert_eq!(tx.changes[0].version, tx.position);
    }

    #[test]
    fn broken_entries_say_why() {
        let e = |fields: &[(&str, &str)]| {
            let entry: Vec<(String, Vec<u8>)> = fields
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect();
            decode_tx(Version::ZERO, &entry, &DecodeOptions::default())
                .unwrap_err()
                .0
        };
        assert!(e(&[("v", "x"), ("changes", "[]")]).contains("not a version"));
        assert!(e(&[("v", "0:1:0"), ("changes", "{")]).contains("not the feed's JSON"));
        assert!(
            e(&[
                ("v", "0:1:0"),
                ("changes", r#"[{"id":"a","op":"q","v":"0:1:0"}]"#)
            ])
            .contains("unknown op")
        );
    }

    #[test]
    fn partitions_spread_and_stay_in_range() {
        let mut c = PipelineConfig::new("p", "r");
        c.partitions = 3;
        let used: std::collections::BTreeSet<u16> = (0..30)
            .map(|i| c.partition_of(Version::new(i, 0)))
            .collect();
        assert_eq!(used.into_iter().collect::<Vec<_>>(), vec![0, 1, 2]);
        c.partitions = 0;
        assert_eq!(c.partition_of(Version::new(5, 0)), 0);
        // PostgreSQL commit LSNs are 8-byte aligned: all four partitions
        // still get their share.
        c.partitions = 4;
        let mut counts = [0usize; 4];
        for i in 0..400u64 {
            counts[usize::from(c.partition_of(Version::new(0x0100_0000 + i * 8 * 13, 0)))] += 1;
        }
        assert!(counts.iter().all(|&n| n > 60), "{counts:?}");
    }
}
