//! [`Version`]: a position in a source's change stream, and so the version
//! of every cached key.

use std::fmt;
use std::str::FromStr;

/// A position in a source's change stream, and so the version of every
/// cached key: the commit position of the source transaction that wrote it,
/// then the change's place inside that transaction.
///
/// Versions are totally ordered, field by field. A write reaches Redis only
/// when its version is newer than the one stored with the key, so
/// duplicates, replays, reorders and competing appliers cannot move a key
/// back in time. Any 64-bit `commit` is exact: in Redis the version is
/// stored as three integers below 2<sup>32</sup> (Lua numbers are doubles).
///
/// ```
/// use prefetch::Version;
///
/// let a = Version::new(u64::MAX - 1, 7);
/// let b = Version::new(u64::MAX, 0);
/// assert!(a < b);
/// assert_eq!(a.to_string().parse::<Version>(), Ok(a));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// The commit position (an LSN, a sequence number, a stream offset).
    pub commit: u64,
    /// The change's place inside its transaction.
    pub ord: u32,
}

impl Version {
    /// The lowest version: older than anything a source produces.
    pub const ZERO: Version = Version { commit: 0, ord: 0 };

    /// A version from its parts.
    pub const fn new(commit: u64, ord: u32) -> Self {
        Self { commit, ord }
    }
}

/// `hi:lo:ord`, the form stored in Redis: the commit's high and low 32 bits
/// and the ordinal, each a decimal integer below 2<sup>32</sup>.
impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}",
            self.commit >> 32,
            self.commit & 0xFFFF_FFFF,
            self.ord
        )
    }
}

/// The [`Version`] text is not `hi:lo:ord` with each part below 2<sup>32</sup>.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a version (expected hi:lo:ord)")]
pub struct ParseVersionError;

impl FromStr for Version {
    type Err = ParseVersionError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let mut parts = s.split(':').map(|p| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseVersionError);
            }
            p.parse::<u32>().map_err(|_| ParseVersionError)
        });
        let (Some(hi), Some(lo), Some(ord), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ParseVersionError);
        };
        Ok(Version::new((u64::from(hi?) << 32) | u64::from(lo?), ord?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_commit_then_ordinal_and_round_trip_as_text() {
        let cases = [
            Version::ZERO,
            Version::new(1, 0),
            Version::new(1, 1),
            Version::new((1 << 32) - 1, u32::MAX),
            Version::new(1 << 32, 0),
            Version::new((1 << 53) - 1, 2),
            Version::new(1 << 53, 0),
            Version::new((1 << 53) + 1, 0),
            Version::new(u64::MAX, u32::MAX),
        ];
        for w in cases.windows(2) {
            assert!(w[0] < w[1], "{:?} < {:?}", w[0], w[1]);
        }
        for v in cases {
            assert_eq!(v.to_string().parse::<Version>(), Ok(v));
        }
        assert_eq!(Version::new(1 << 32 | 5, 9).to_string(), "1:5:9");
        for bad in [
            "",
            "1:2",
            "1:2:3:4",
            "a:b:c",
            "1:2:4294967296",
            "-1:0:0",
            "+1:0:0",
        ] {
            assert!(bad.parse::<Version>().is_err(), "{bad:?}");
        }
    }
}
