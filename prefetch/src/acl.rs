//! What a cache needs of Redis, as the parts of an ACL rule: the commands it
//! sends (its FUNCTION library's included, since Redis checks the commands a
//! function calls against the caller's rule too) and the key patterns it
//! touches. Crates that add work of their own (a change feed, a stream
//! source) add their commands and keys to the same [`AclRule`].

use std::collections::BTreeSet;
use std::fmt;

use crate::keys::{KeySpace, RESERVED_KEY_PREFIX, escape_glob};

/// The commands of a cache on one Redis node.
///
/// Reads (`HGETALL`, `GET`, `EXISTS`, `TTL`, `SCAN`, `DBSIZE`…), the guarded writes (`FCALL`, and the
/// library loaded with `FUNCTION LOAD`), the commands its functions call,
/// loads and sweeps, `INFO` for the memory check and `ECHO` as a probe.
pub const CACHE_COMMANDS: &[&str] = &[
    "ping",
    "echo",
    "select",
    "info",
    "dbsize",
    "scan",
    "type",
    "exists",
    "ttl",
    "get",
    "set",
    "del",
    "expire",
    "pexpire",
    "pexpireat",
    "hget",
    "hmget",
    "hgetall",
    "hexists",
    "hset",
    "hdel",
    "hincrby",
    "time",
    "fcall",
    "function|load",
];

/// On a Redis Cluster, what the client needs to follow the slot map.
pub const CLUSTER_COMMANDS: &[&str] = &["cluster|slots", "asking", "readonly"];

/// With replicas that must hold each batch before it counts as durable.
pub const WAIT_COMMANDS: &[&str] = &["wait"];

/// An ACL rule for one Redis user, built from what each part of a program
/// needs; its [`Display`](fmt::Display) is ready for
/// `ACL SETUSER <name> on ><password> <rule>`.
///
/// It starts from nothing (`resetkeys resetchannels -@all`) and grants
/// only the commands and keys added, so a command a part forgot to declare
/// is refused by Redis (and shows in `ACL LOG`).
///
/// ```
/// use prefetch::{AclRule, KeySpace};
///
/// let mut rule = AclRule::for_cache(&KeySpace::new("cache:category:"), false, false);
/// rule.read_keys(["data:shop.public.categories"]);
/// let text = rule.to_string();
/// assert!(text.starts_with("resetkeys resetchannels -@all "));
/// assert!(text.contains(" +fcall "));
/// assert!(text.contains(" ~cache:category:* "));
/// assert!(text.ends_with(" %R~data:shop.public.categories"));
/// assert!(!text.contains("+@all"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AclRule {
    commands: BTreeSet<String>,
    keys: Vec<String>,
    read_keys: Vec<String>,
    channels: Vec<String>,
}

impl AclRule {
    /// What the cache over `keys` needs: [`CACHE_COMMANDS`], with
    /// [`CLUSTER_COMMANDS`] on a cluster and [`WAIT_COMMANDS`] when it waits
    /// for replicas, and the keys of [`cache_key_patterns`].
    pub fn for_cache(keys: &KeySpace, cluster: bool, wait: bool) -> Self {
        let mut rule = Self::default();
        rule.commands(CACHE_COMMANDS.iter().copied());
        if cluster {
            rule.commands(CLUSTER_COMMANDS.iter().copied());
        }
        if wait {
            rule.commands(WAIT_COMMANDS.iter().copied());
        }
        rule.keys(cache_key_patterns(keys));
        rule
    }

    /// Allows these commands (`name` or `name|subcommand`, lower case).
    pub fn commands<S: Into<String>>(&mut self, commands: impl IntoIterator<Item = S>) {
        self.commands.extend(commands.into_iter().map(Into::into));
    }

    /// Allows reading and writing the keys matching these glob patterns.
    pub fn keys<S: Into<String>>(&mut self, patterns: impl IntoIterator<Item = S>) {
        for p in patterns {
            let p = p.into();
            if !self.keys.contains(&p) {
                self.keys.push(p);
            }
        }
    }

    /// Allows only reading the keys matching these glob patterns.
    pub fn read_keys<S: Into<String>>(&mut self, patterns: impl IntoIterator<Item = S>) {
        for p in patterns {
            let p = p.into();
            if !self.read_keys.contains(&p) {
                self.read_keys.push(p);
            }
        }
    }

    /// Allows subscribing to these channel patterns (as given to
    /// `PSUBSCRIBE`: Redis matches a pattern subscription literally).
    pub fn channels<S: Into<String>>(&mut self, patterns: impl IntoIterator<Item = S>) {
        for p in patterns {
            let p = p.into();
            if !self.channels.contains(&p) {
                self.channels.push(p);
            }
        }
    }

    /// The commands allowed, sorted.
    pub fn allowed_commands(&self) -> impl Iterator<Item = &str> {
        self.commands.iter().map(String::as_str)
    }

    /// The rule as separate arguments of `ACL SETUSER` (after the user's
    /// name, `on` and its password).
    pub fn args(&self) -> Vec<String> {
        let mut out = vec![
            "resetkeys".to_owned(),
            "resetchannels".to_owned(),
            "-@all".to_owned(),
        ];
        out.extend(self.commands.iter().map(|c| format!("+{c}")));
        out.extend(self.keys.iter().map(|k| format!("~{k}")));
        out.extend(self.read_keys.iter().map(|k| format!("%R~{k}")));
        out.extend(self.channels.iter().map(|c| format!("&{c}")));
        out
    }
}

impl fmt::Display for AclRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.args().join(" "))
    }
}

/// The key patterns of a cache.
///
/// Its records (under each table's prefix, or the one prefix), their
/// tombstones, and its state, window and per-slot
/// copies, named after the cache, so that two caches in one Redis can have
/// users that see only their own keys.
///
/// ```
/// let p = prefetch::cache_key_patterns(&prefetch::KeySpace::new("cache:"));
/// assert_eq!(p, [
///     "cache:*", "__pf:t:cache:*", "__pf:u:{cache:*",
///     "__pf:m:cache:", "__pf:s:*cache:", "__pf:w:*cache:", "__pf:ws:*cache:",
/// ]);
/// ```
pub fn cache_key_patterns(keys: &KeySpace) -> Vec<String> {
    let tables = keys.tables();
    let mut out: Vec<String> = if tables.is_empty() {
        vec![keys.scan_pattern().to_owned()]
    } else {
        tables
            .iter()
            .map(|t| format!("{}*", escape_glob(t)))
            .collect()
    };
    out.extend(keys.tombstone_patterns());
    let state = escape_glob(keys.state_name());
    let r = RESERVED_KEY_PREFIX;
    out.push(format!("{r}m:{state}"));
    // The tag in front of the name is one of many (one per slot).
    for kind in ["s", "w", "ws"] {
        out.push(format!("{r}{kind}:*{state}"));
    }
    out
}
