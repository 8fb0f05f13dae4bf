//! A stream's history: entry ids as versions, what `XINFO STREAM` says
//! is still held, and entries as they come off the wire.

use prefetch::{Error, Result, Version};
use redis::{FromRedisValue, Value};

/// What `XINFO STREAM` says about the stream's history (Redis 7.0+).
pub(crate) struct StreamInfo {
    /// The last id ever added.
    pub(crate) last: Version,
    /// The highest id removed by `XDEL` (`0-0`: none).
    pub(crate) max_deleted: Version,
    /// The first entry still held (`0-0` when empty).
    pub(crate) first: Version,
    /// Entries added but no longer held (trimmed or deleted).
    pub(crate) removed: u64,
}

impl StreamInfo {
    /// Whether every entry after `at` is still in the stream and `at` is
    /// from this stream's history: nothing above it was deleted, whatever
    /// trimming removed lies at or below it, and the stream started at or
    /// before it (a stream deleted and written again starts after it).
    pub(crate) fn holds_everything_after(&self, at: Version) -> bool {
        at <= self.last && self.max_deleted <= at && self.first <= at
    }
}

/// `<ms>-<seq>` as a version.
pub(crate) fn parse_id(text: &str) -> Result<Version> {
    let bad = || Error::source_failed(format!("'{text}' is not a stream entry id"));
    let (ms, seq) = text.split_once('-').ok_or_else(bad)?;
    let ms: u64 = ms.parse().map_err(|_| bad())?;
    let seq: u64 = seq.parse().map_err(|_| bad())?;
    let seq = u32::try_from(seq).map_err(|_| {
        Error::source_failed(format!(
            "entry id '{text}': sequence numbers above 2^32 within one millisecond are not supported"
        ))
    })?;
    Ok(Version::new(ms, seq))
}

pub(crate) fn id_text(v: Version) -> String {
    format!("{}-{}", v.commit, v.ord)
}

/// One entry: its id and its field/value pairs.
pub(crate) type Entry = (Version, Vec<(String, Vec<u8>)>);

/// `[[id, [field, value, …]], …]` as entries.
pub(crate) fn parse_entries(reply: Value) -> Result<Vec<Entry>> {
    let items: Vec<(String, Vec<Vec<u8>>)> =
        FromRedisValue::from_redis_value(reply).map_err(Error::source_failed)?;
    items
        .into_iter()
        .map(|(id, flat)| {
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((String::from_utf8_lossy(&k).into_owned(), v));
            }
            Ok((parse_id(&id)?, pairs))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use prefetch::Version;

    #[test]
    fn a_stream_resumes_only_when_nothing_after_the_position_is_gone() {
        let v = |ms| Version::new(ms, 0);
        let info = |first, removed, max_deleted| StreamInfo {
            last: v(100),
            max_deleted: v(max_deleted),
            first: v(first),
            removed,
        };
        assert!(info(1, 0, 0).holds_everything_after(v(50)));
        assert!(
            info(40, 3, 0).holds_everything_after(v(50)),
            "trimmed below"
        );
        assert!(info(40, 3, 0).holds_everything_after(v(40)));
        assert!(
            !info(60, 3, 0).holds_everything_after(v(50)),
            "trimmed past it"
        );
        assert!(
            !info(60, 0, 0).holds_everything_after(v(50)),
            "a stream that starts after the position is another history"
        );
        assert!(
            !info(1, 1, 70).holds_everything_after(v(50)),
            "deleted after it"
        );
        assert!(info(1, 1, 30).holds_everything_after(v(50)));
        assert!(
            !info(1, 0, 0).holds_everything_after(v(101)),
            "another history"
        );
    }

    #[test]
    fn entry_ids_are_versions_and_back() {
        let v = parse_id("1700000000000-7").unwrap();
        assert_eq!(v, Version::new(1_700_000_000_000, 7));
        assert_eq!(id_text(v), "1700000000000-7");
        assert!(parse_id("17").is_err());
        assert!(parse_id("1-x").is_err());
        assert!(parse_id("1-4294967296").is_err());
        assert!(parse_id("0-0").unwrap() < parse_id("0-1").unwrap());
        assert!(parse_id("1-99").unwrap() < parse_id("2-0").unwrap());
    }
}
