//! [`StreamConfig`]: where the stream is and how to read it.

use std::time::Duration;

use crate::decode::DecodeOptions;

/// Where the stream is and how to read it.
#[derive(Clone, Debug)]
pub struct StreamConfig {
    /// The stream's key.
    pub stream: String,
    /// How entries are decoded.
    pub decode: DecodeOptions,
    /// How long one blocking read waits before asking again.
    pub block: Duration,
    /// Entries per `XRANGE` round trip while folding a snapshot.
    pub snapshot_chunk: usize,
    /// Build a snapshot even when entries were trimmed or deleted from the
    /// stream. Off by default: records whose every entry is gone would be
    /// missing from the cache with nothing to bring them back.
    pub allow_incomplete_history: bool,
}

impl StreamConfig {
    /// Follows the stream named `stream`.
    pub fn new(stream: impl Into<String>) -> Self {
        Self {
            stream: stream.into(),
            decode: DecodeOptions::default(),
            block: Duration::from_secs(1),
            snapshot_chunk: 1000,
            allow_incomplete_history: false,
        }
    }

    /// The stream Debezium Server's Redis sink writes for a table:
    /// `<topic.prefix>.<schema>.<table>`.
    ///
    /// ```
    /// use prefetch_cdc::StreamConfig;
    /// assert_eq!(StreamConfig::debezium("shop", "public", "categories").stream, "shop.public.categories");
    /// assert_eq!(StreamConfig::rdi("shop", "public", "categories").stream, "data:shop.public.categories");
    /// ```
    pub fn debezium(topic_prefix: &str, schema: &str, table: &str) -> Self {
        Self::new(format!("{topic_prefix}.{schema}.{table}"))
    }

    /// The stream RDI's collector writes for a table:
    /// `data:<topic.prefix>.<schema>.<table>`.
    pub fn rdi(topic_prefix: &str, schema: &str, table: &str) -> Self {
        Self::new(format!("data:{topic_prefix}.{schema}.{table}"))
    }
}
