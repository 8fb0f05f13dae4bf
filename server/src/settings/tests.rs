//! The flags resolved: what each combination gives or why it is refused.

use clap::Parser;

use super::*;

#[test]
fn flags_resolve_into_typed_settings() {
    let s = Config::try_parse_from(["server"])
        .unwrap()
        .resolve()
        .unwrap();
    assert_eq!(s.redis, RedisTarget::Default { forced: false });
    assert_eq!(s.primary, PrimaryKind::Mock);
    assert_eq!(s.engine.memory_check, MemoryCheck::Refuse);
    assert!(s.faults, "on loopback");
    assert_eq!(s.reconcile_every, None);
    let s = Config::try_parse_from([
        "server",
        "--redis-cluster",
        "redis://a:1,redis://b:2",
        "--memory-check",
        "warn",
        "--reconcile-every",
        "30",
    ])
    .unwrap()
    .resolve()
    .unwrap();
    assert_eq!(
        s.redis,
        RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])
    );
    assert_eq!(s.engine.memory_check, MemoryCheck::Warn);
    assert_eq!(s.reconcile_every, Some(Duration::from_secs(30)));
}

#[test]
fn the_primary_is_the_mock_unless_postgres_is_named() {
    let c = Config::try_parse_from(["server"]).unwrap();
    assert_eq!(c.primary_kind().unwrap(), PrimaryKind::Mock);
    let c = Config::try_parse_from(["server", "--primary", "postgres"]).unwrap();
    assert_eq!(c.primary_kind().unwrap(), PrimaryKind::EmbeddedPostgres);
    let c = Config::try_parse_from(["server", "--primary", "postgres://u@h/db"]).unwrap();
    assert_eq!(
        c.primary_kind().unwrap(),
        PrimaryKind::Postgres("postgres://u@h/db".into())
    );
    let c = Config::try_parse_from(["server", "--primary", "mysql://x"]).unwrap();
    assert!(c.primary_kind().is_err());
    let c = Config::try_parse_from(["server", "--primary", "stream:data:a.b.c"]).unwrap();
    assert_eq!(
        c.primary_kind().unwrap(),
        PrimaryKind::Stream("data:a.b.c".into())
    );
    let c = Config::try_parse_from(["server", "--primary", "stream:"]).unwrap();
    assert!(c.primary_kind().is_err());
}

#[test]
fn a_pipeline_needs_a_shared_primary_a_valid_name_and_its_own_keys() {
    let resolve = |args: &[&str]| {
        let mut all = vec!["server"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap().resolve()
    };
    assert!(resolve(&["--pipeline", "p"]).is_err(), "the mock");
    assert!(resolve(&["--pipeline", "p", "--primary", "postgres"]).is_err());
    let pg = ["--primary", "postgres://u@h/db"];
    assert!(resolve(&[&pg[..], &["--pipeline", "p"]].concat()).is_ok());
    assert!(resolve(&[&pg[..], &["--pipeline", "a{b"]].concat()).is_err());
    let overlap = [&pg[..], &["--pipeline", "p", "--cache-prefix", "prefetch:"]].concat();
    assert!(resolve(&overlap).is_err());
}

#[test]
fn a_tables_file_sets_the_table_prefix_and_ttl_and_needs_postgres() {
    let dir = std::env::temp_dir().join(format!("prefetch-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let one = write(
        "one.toml",
        "[[table]]\ntable = \"shop.items\"\nttl_secs = 60\n",
    );
    let two = write(
        "two.toml",
        "[[table]]\ntable = \"a\"\nttl_secs = 5\n\n[[table]]\ntable = \"b\"\nttl_secs = 6\n",
    );
    let both = write(
        "both.toml",
        "[[table]]\ntable = \"a\"\nkey = \"shop:a:{id}\"\n[[table]]\ntable = \"b\"\nkey = \"shop:b:{id}\"\n",
    );
    let resolve = |args: &[&str]| {
        let mut all = vec!["server"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap().resolve()
    };
    let s = resolve(&["--primary", "postgres://u@h/db", "--config", &one]).unwrap();
    assert_eq!(s.pg.table, "shop.items");
    assert_eq!(s.engine.cache.prefix, "shop.items:");
    assert_eq!(s.engine.cache.ttl, Duration::from_secs(60));
    let s = resolve(&["--primary", "postgres", "--config", &both]).unwrap();
    assert_eq!(s.pg.table, "a");
    assert_eq!(s.engine.cache.prefix, "shop:");
    assert_eq!(s.engine.cache.tables, ["shop:a:", "shop:b:"]);
    let refused = |args: &[&str], why: &str| {
        let err = resolve(args).unwrap_err().to_string();
        assert!(err.contains(why), "{err}");
    };
    let pg = ["--primary", "postgres", "--config"];
    let s = resolve(&[&pg[..], &[&two]].concat()).unwrap();
    let own = [
        ("a:".to_owned(), Duration::from_secs(5)),
        ("b:".to_owned(), Duration::from_secs(6)),
    ];
    assert_eq!(s.engine.cache.table_ttls, own, "each table its own TTL");
    refused(&["--config", &one], "needs a PostgreSQL primary");
    let init = ["--primary", "postgres://u@h/db", "--pg-init", &one];
    refused(&init, "private PostgreSQL only");
    let missing = dir.join("missing.toml").to_string_lossy().into_owned();
    refused(
        &[&pg[..], &[&missing]].concat(),
        "cannot read the tables file",
    );
    // A stream carrying several tables: key templates and columns, but no
    // filter (PostgreSQL's) and no --stream-id-columns.
    let stream = ["--primary", "stream:shop"];
    let s = resolve(&[&stream[..], &["--config", &both]].concat()).unwrap();
    assert_eq!(s.engine.cache.tables, ["shop:a:", "shop:b:"]);
    let filtered = write("f.toml", "[[table]]\ntable = \"a\"\nfilter = \"x > 1\"\n");
    refused(
        &[&stream[..], &["--config", &filtered]].concat(),
        "f.toml:1: `filter`",
    );
    let ids = ["--stream-id-columns", "sku", "--config", &both];
    refused(
        &[&stream[..], &ids[..]].concat(),
        "--stream-id-columns and --config",
    );
    let _ = std::fs::remove_dir_all(&dir);
}
