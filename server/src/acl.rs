//! `--print-redis-acl`: the Redis ACL rule the other flags need, so that an
//! operator can give the server a user of its own instead of an admin.
//!
//! The rule grants the commands of the cache, of the pipeline and of a
//! stream source, as each crate declares them, on the keys these flags
//! name, and nothing else. It leaves out `CONFIG`: without it the server
//! cannot turn keyspace notifications on, and its live feed polls for
//! changes made outside it (the extension printed beside the rule turns
//! them on, at the price of a command that can change any setting).

use prefetch::{AclRule, KeySpace, escape_glob};

use crate::settings::{PrimaryKind, RedisTarget, Settings};

/// The rule for the Redis holding the cache.
pub fn redis_rule(settings: &Settings) -> AclRule {
    let cache = &settings.engine.cache;
    let keys = KeySpace::with_tables(cache.prefix.clone(), cache.tables.clone());
    let cluster = matches!(settings.redis, RedisTarget::Cluster(_));
    let mut rule = AclRule::for_cache(&keys, cluster, cache.wait_replicas > 0);
    if let Some(pipeline) = &settings.pipeline {
        rule.commands(prefetch_pipeline::REDIS_COMMANDS.iter().copied());
        rule.keys([pipeline.key_pattern()]);
    }
    if let Some(key) = stream_key(settings)
        && settings.stream.redis_url.is_none()
    {
        rule.commands(prefetch_cdc::REDIS_COMMANDS.iter().copied());
        rule.read_keys([escape_glob(key)]);
    }
    rule
}

/// The stream a `stream:<key>` primary reads.
fn stream_key(settings: &Settings) -> Option<&str> {
    match &settings.primary {
        PrimaryKind::Stream(key) => Some(key),
        _ => None,
    }
}

/// What to add to [`redis_rule`] for the live feed to follow keyspace
/// notifications (`db` is the database of the URL).
pub fn keyspace_extension(settings: &Settings, db: i64) -> AclRule {
    let mut rule = AclRule::default();
    rule.commands(["config|get", "config|set", "psubscribe"]);
    rule.channels([format!(
        "__keyspace@{db}__:{}*",
        escape_glob(&settings.engine.cache.prefix)
    )]);
    rule
}

/// What `--print-redis-acl` prints: the rule on standard output (one line,
/// ready for `ACL SETUSER`), and how to use it on standard error.
pub fn print(settings: &Settings) -> (String, String) {
    let rule = redis_rule(settings);
    let db = match &settings.redis {
        RedisTarget::Url(url) => redis::Client::open(url.as_str())
            .map(|c| c.get_connection_info().redis_settings().db())
            .unwrap_or(0),
        _ => 0,
    };
    let extension = keyspace_extension(settings, db);
    let extension = extension
        .args()
        .into_iter()
        .skip(3) // resetkeys resetchannels -@all
        .collect::<Vec<_>>()
        .join(" ");
    let mut help = String::from(
        "# The Redis ACL rule these flags need (standard output). Give the server a user of its own:\n\
         #   ACL SETUSER prefetch on >PASSWORD <the rule>\n\
         # and put the user in the URL (redis://prefetch:PASSWORD@host:6379/), on every node of a cluster.\n",
    );
    help.push_str(&format!(
        "# Without CONFIG the live feed polls for changes made outside the server. To have it follow\n\
         # keyspace notifications instead, append: {extension}\n"
    ));
    if let Some(key) = stream_key(settings)
        && settings.stream.redis_url.is_some()
    {
        let mut stream = AclRule::default();
        stream.commands(prefetch_cdc::REDIS_COMMANDS.iter().copied());
        stream.read_keys([escape_glob(key)]);
        help.push_str(&format!(
            "# The Redis of --stream-redis-url needs a user with: {stream}\n"
        ));
    }
    help.push_str(
        "# A table added to the tables file later under a new key prefix needs the rule printed again.\n",
    );
    (rule.to_string(), help)
}
