//! Key naming: `{prefix}{id}`, and the SCAN pattern that matches exactly the
//! keys under a prefix even when the prefix itself holds glob characters.

/// Characters that are special in Redis glob patterns (`SCAN MATCH`, `KEYS`).
const GLOB_SPECIAL: &[char] = &['*', '?', '[', ']', '\\', '^', '-'];

/// Escapes `s` so that, used inside a Redis glob pattern, it matches itself
/// literally. `cache:*:` becomes `cache:\*:`.
pub fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if GLOB_SPECIAL.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The key space of one cache: its prefix and the derived SCAN pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
    pattern: String,
}

impl KeySpace {
    /// A key space for `prefix` (which may be empty).
    pub fn new(prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        let pattern = format!("{}*", escape_glob(&prefix));
        Self { prefix, pattern }
    }

    /// The prefix every key starts with.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key for `id`.
    pub fn key(&self, id: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + id.len());
        key.push_str(&self.prefix);
        key.push_str(id);
        key
    }

    /// The id inside `key`, or `None` when `key` is not under this prefix.
    pub fn id_of<'k>(&self, key: &'k str) -> Option<&'k str> {
        key.strip_prefix(self.prefix.as_str())
    }

    /// `SCAN MATCH` pattern matching every key under the prefix and nothing else.
    pub fn scan_pattern(&self) -> &str {
        &self.pattern
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_prefix_gets_a_trailing_star() {
        assert_eq!(
            KeySpace::new("cache:category:").scan_pattern(),
            "cache:category:*"
        );
    }

    #[test]
    fn glob_characters_in_the_prefix_are_escaped() {
        let ks = KeySpace::new("a*b?c[d]e\\f");
        assert_eq!(ks.scan_pattern(), "a\\*b\\?c\\[d\\]e\\\\f*");
    }

    #[test]
    fn keys_round_trip_through_id_of() {
        let ks = KeySpace::new("p:");
        let key = ks.key("cat 1/é");
        assert_eq!(key, "p:cat 1/é");
        assert_eq!(ks.id_of(&key), Some("cat 1/é"));
        assert_eq!(ks.id_of("other:cat"), None);
    }
}
