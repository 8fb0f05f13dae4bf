//! A pipeline's names, partitions and timings, and stream entry ids.

use std::time::Duration;

use prefetch::{Error, Result, Version};
use redis::{FromRedisValue, Value};
use tokio_util::sync::CancellationToken;

/// Names, partitions and timings of one pipeline.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    /// The pipeline's name (every key is under `prefetch:<name>:`).
    pub name: String,
    /// Partition streams (transactions are spread by position).
    pub partitions: u16,
    /// The consumer group every replica applies from.
    pub group: String,
    /// This replica's name in the group and for the lease; unique per
    /// replica, and stable across its restarts if it should find its own
    /// pending entries again.
    pub consumer: String,
    /// How long one blocking read waits.
    pub block: Duration,
    /// An entry pending this long at another consumer is claimed.
    pub claim_idle: Duration,
    /// How often a consumer looks for entries to claim.
    pub claim_every: Duration,
    /// An entry already delivered this many times without being
    /// acknowledged goes to the dead-letter stream when claimed again.
    pub max_deliveries: u64,
    /// The dead-letter stream's approximate cap.
    pub dlq_max_len: u64,
    /// The lease's time to live; it is renewed every third of it.
    pub lease_ttl: Duration,
    /// How often the leader trims what every group acknowledged.
    pub trim_every: Duration,
    /// Replicas of each Redis primary that must hold a published batch
    /// (`WAIT`) before the leader tells the source it is durable (0: none).
    /// Set it as the cache's `wait_replicas`: a failover to a replica that
    /// lacks entries the source already forgot would lose them.
    pub wait_replicas: u32,
    /// How long each primary may take to answer that `WAIT`.
    pub wait_timeout: Duration,
}

impl PipelineConfig {
    /// A pipeline named `name`, for the replica named `consumer`.
    pub fn new(name: impl Into<String>, consumer: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            partitions: 4,
            group: "appliers".into(),
            consumer: consumer.into(),
            block: Duration::from_millis(500),
            claim_idle: Duration::from_secs(5),
            claim_every: Duration::from_secs(1),
            max_deliveries: 5,
            dlq_max_len: 10_000,
            lease_ttl: Duration::from_secs(3),
            trim_every: Duration::from_secs(5),
            wait_replicas: 0,
            wait_timeout: Duration::from_secs(1),
        }
    }

    /// Refuses a pipeline or consumer name that is blank, and a pipeline
    /// name with a brace: the name is its keys' hash tag.
    ///
    /// ```
    /// use prefetch_pipeline::PipelineConfig;
    /// assert!(PipelineConfig::new("shop", "replica-1").validate().is_ok());
    /// assert!(PipelineConfig::new("sh{op}", "replica-1").validate().is_err());
    /// assert!(PipelineConfig::new("shop", " ").validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        if self.consumer.trim().is_empty() || self.name.trim().is_empty() {
            return Err(Error::InvalidConfig(
                "a pipeline needs a name and a consumer name".into(),
            ));
        }
        if self.name.contains(['{', '}']) {
            return Err(Error::InvalidConfig(
                "a pipeline's name must not contain '{' or '}': it is the hash tag that keeps the pipeline's keys in one cluster slot".into(),
            ));
        }
        Ok(())
    }

    /// Partition stream `p`.
    ///
    /// Every key of a pipeline carries its name as a hash tag, so on a
    /// Redis Cluster they share one slot: the fenced publish checks the
    /// lease and appends to every partition in one script.
    ///
    /// ```
    /// let c = prefetch_pipeline::PipelineConfig::new("shop", "replica-1");
    /// assert_eq!(c.stream(7), "prefetch:{shop}:cdc:p07");
    /// assert_eq!(prefetch::slot(&c.stream(7)), prefetch::slot(&c.leader_key()));
    /// ```
    pub fn stream(&self, p: u16) -> String {
        format!("prefetch:{{{}}}:cdc:p{p:02}", self.name)
    }

    /// Every partition stream.
    pub fn streams(&self) -> Vec<String> {
        (0..self.partitions.max(1))
            .map(|p| self.stream(p))
            .collect()
    }

    /// The partition a transaction goes to: its position's bits mixed
    /// (splitmix64), since positions such as PostgreSQL LSNs are aligned
    /// and would all land on one partition under a plain modulo.
    pub fn partition_of(&self, position: Version) -> u16 {
        let n = u64::from(self.partitions.max(1));
        let mut z = position
            .commit
            .wrapping_add(u64::from(position.ord).rotate_left(32))
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z % n) as u16
    }

    /// The lease key.
    pub fn leader_key(&self) -> String {
        format!("prefetch:{{{}}}:leader", self.name)
    }

    /// The last published position.
    pub fn published_key(&self) -> String {
        format!("prefetch:{{{}}}:published", self.name)
    }

    /// The resync counter.
    pub fn resync_key(&self) -> String {
        format!("prefetch:{{{}}}:resync", self.name)
    }

    /// The resync counter's value the last snapshot covered.
    pub fn covered_key(&self) -> String {
        format!("prefetch:{{{}}}:resync:covered", self.name)
    }

    /// The dead-letter stream.
    pub fn dlq_key(&self) -> String {
        format!("prefetch:{{{}}}:dlq", self.name)
    }

    /// Every key of the pipeline starts with this.
    pub fn key_prefix(&self) -> String {
        format!("prefetch:{{{}}}:", self.name)
    }

    /// The glob pattern of every key of the pipeline, for an ACL rule.
    ///
    /// ```
    /// let c = prefetch_pipeline::PipelineConfig::new("shop", "r1");
    /// assert_eq!(c.key_pattern(), "prefetch:{shop}:*");
    /// ```
    pub fn key_pattern(&self) -> String {
        format!("{}*", prefetch::escape_glob(&self.key_prefix()))
    }
}

pub(crate) fn parse_entry_id(text: &str) -> Result<Version> {
    let bad = || Error::source_failed(format!("'{text}' is not a stream entry id"));
    let (ms, seq) = text.split_once('-').ok_or_else(bad)?;
    let seq = u32::try_from(seq.parse::<u64>().map_err(|_| bad())?).map_err(|_| bad())?;
    Ok(Version::new(ms.parse().map_err(|_| bad())?, seq))
}

pub(crate) fn entry_id_text(v: Version) -> String {
    format!("{}-{}", v.commit, v.ord)
}

pub(crate) async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = cancel.cancelled() => {}
    }
}

/// One stream entry: its id and its field/value pairs.
pub(crate) type Item = (Version, Vec<(String, Vec<u8>)>);

/// One stream entry with its id as Redis wrote it.
pub(crate) type RawItem = (String, Vec<(String, Vec<u8>)>);

/// `[[id, [field, value, …]], …]` as raw ids and field/value pairs.
pub(crate) fn parse_raw(items: Value) -> Result<Vec<RawItem>> {
    let items: Vec<(String, Option<Vec<Vec<u8>>>)> =
        FromRedisValue::from_redis_value(items).map_err(Error::source_failed)?;
    Ok(items
        .into_iter()
        .map(|(id, flat)| {
            let mut pairs = Vec::new();
            let mut it = flat.unwrap_or_default().into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((String::from_utf8_lossy(&k).into_owned(), v));
            }
            (id, pairs)
        })
        .collect())
}

/// Entries whose ids are versions, and the raw ids of those that are not
/// (a sequence number of 2^32 or more within one millisecond, only
/// possible with ids given explicitly).
pub(crate) fn split_ids(items: Vec<RawItem>) -> (Vec<Item>, Vec<RawItem>) {
    let mut good = Vec::with_capacity(items.len());
    let mut bad = Vec::new();
    for (raw, fields) in items {
        match parse_entry_id(&raw) {
            Ok(id) => good.push((id, fields)),
            Err(_) => bad.push((raw, fields)),
        }
    }
    (good, bad)
}

pub(crate) const BAD_ID: &str = "its entry id is not a version (sequence numbers stop at 2^32 - 1)";
