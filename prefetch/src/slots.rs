//! Redis Cluster hash slots: a key's hash tag and slot (CRC16, as the
//! cluster computes it), and a tag for every slot.

/// The Redis Cluster hash tag of `key`: the text between its first `{` and
/// the first `}` after it, when that text is not empty.
///
/// ```
/// assert_eq!(prefetch::hash_tag("cache:{user1}:x"), Some("user1"));
/// assert_eq!(prefetch::hash_tag("cache:{}:x"), None);
/// assert_eq!(prefetch::hash_tag("cache:x"), None);
/// ```
pub fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let rest = &key[open + 1..];
    let close = rest.find('}')?;
    (close > 0).then(|| &rest[..close])
}

/// How many hash slots a Redis Cluster has.
pub const SLOTS: u16 = 16384;

/// CRC16 (XMODEM), as Redis Cluster hashes keys.
fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The Redis Cluster hash slot of `key` (its hash tag's, when it has one).
///
/// ```
/// assert_eq!(prefetch::slot("foo"), 12182);
/// assert_eq!(prefetch::slot("{foo}bar"), prefetch::slot("foo"));
/// ```
pub fn slot(key: &str) -> u16 {
    crc16(hash_tag(key).unwrap_or(key).as_bytes()) % SLOTS
}

/// A short text that hashes to `slot`: `{tag}` in a key puts the key there.
///
/// ```
/// let tag = prefetch::slot_tag(42);
/// assert_eq!(prefetch::slot(tag), 42);
/// ```
pub fn slot_tag(slot: u16) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); usize::from(SLOTS)];
        let mut missing = tags.len();
        let mut n = 0u32;
        // About 160,000 candidates cover every slot (coupon collector).
        while missing > 0 {
            let tag = format!("{n:x}");
            let s = usize::from(crc16(tag.as_bytes()) % SLOTS);
            if tags[s].is_empty() {
                tags[s] = tag;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    tags[usize::from(slot % SLOTS)].as_str()
}
