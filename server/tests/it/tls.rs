//! TLS everywhere: `rediss://` with a CA and a client certificate made at
//! test time against `redis-server --tls-port`, and PostgreSQL with
//! `ssl=on` reached with `sslmode=verify-full` and a client certificate on
//! both the SQL and the replication connection.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use prefetch::testing::{TestCerts, TestRedis};
use prefetch_pg::launcher::PostgresServer;

use crate::common::{free_port, postgres_client};
use crate::privilege::Logged;

fn p(path: &Path) -> &str {
    TestCerts::path(path)
}

/// A redis-server with a TLS port that asks for client certificates;
/// the `rediss://` URL of that port.
fn tls_redis(certs: &TestCerts) -> (TestRedis, String) {
    let port = free_port().to_string();
    let redis = TestRedis::spawn_with(
        false,
        &[
            "--tls-port",
            &port,
            "--tls-cert-file",
            p(&certs.server_cert),
            "--tls-key-file",
            p(&certs.server_key),
            "--tls-ca-cert-file",
            p(&certs.ca),
            "--tls-auth-clients",
            "yes",
        ],
    );
    (redis, format!("rediss://127.0.0.1:{port}/"))
}

#[tokio::test]
async fn the_cache_reaches_redis_over_tls_with_a_client_certificate() {
    let certs = TestCerts::generate();
    let (redis, url) = tls_redis(&certs);
    let prefix = "tls:cat:";
    let flags = |ca: &str, client: bool| -> Vec<String> {
        let mut f = vec![
            "--redis-url",
            &url,
            "--cache-prefix",
            prefix,
            "--redis-tls-ca",
            ca,
        ];
        if client {
            f.extend([
                "--redis-tls-cert",
                p(&certs.client_cert),
                "--redis-tls-key",
                p(&certs.client_key),
            ]);
        }
        f.into_iter().map(str::to_owned).collect()
    };
    let run = |f: &[String]| Logged::spawn(&f.iter().map(String::as_str).collect::<Vec<_>>());
    let mut srv = run(&flags(p(&certs.ca), true));
    srv.wait_running().await;
    let (status, json) = srv
        .post("/update", "id=cat-001&field=name&value=Over TLS")
        .await;
    assert_eq!(status, 200, "{json}");
    srv.read_until("cat-001", "the update", |b| {
        b["record"]["name"] == "Over TLS"
    })
    .await;
    // The plain port (the test's own) sees what went through the TLS one.
    let mut admin = redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let name: String = redis::cmd("HGET")
        .arg(format!("{prefix}cat-001"))
        .arg("name")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert_eq!(name, "Over TLS");
    drop(srv);

    // A server certificate from another CA is refused, and so is a client
    // without a certificate.
    let other = TestCerts::generate();
    let out = run(&flags(p(&other.ca), true)).exit_output();
    assert!(
        out.contains("error") && out.to_lowercase().contains("certificate"),
        "{out}"
    );
    let out = run(&flags(p(&certs.ca), false)).exit_output();
    assert!(out.contains("error"), "{out}");
    // A plain URL with TLS flags is a mistake said at once.
    let plain = redis.url.clone();
    let out = Logged::spawn(&["--redis-url", &plain, "--redis-tls-ca", p(&certs.ca)]).exit_output();
    assert!(out.contains("need a rediss:// URL"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cache_reaches_a_cluster_over_tls() {
    let certs = TestCerts::generate();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let node_args = {
        let (cert, key, ca) = (
            p(&certs.server_cert).to_owned(),
            p(&certs.server_key).to_owned(),
            p(&certs.ca).to_owned(),
        );
        let ports = ports.clone();
        move |i: usize| -> Vec<String> {
            [
                "--tls-port",
                &ports[i].to_string(),
                "--tls-cluster",
                "yes",
                "--tls-cert-file",
                &cert,
                "--tls-key-file",
                &key,
                "--tls-ca-cert-file",
                &ca,
                "--tls-auth-clients",
                "optional",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
        }
    };
    let cluster = tokio::task::spawn_blocking(move || {
        prefetch::testing::TestCluster::start_with(3, 0, node_args)
    })
    .await
    .unwrap();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("rediss://127.0.0.1:{p}/"))
        .collect();
    let prefix = "tlsc:cat:";
    let urls = urls.join(",");
    let mut srv = Logged::spawn(&[
        "--redis-cluster",
        &urls,
        "--redis-tls-ca",
        p(&certs.ca),
        "--cache-prefix",
        prefix,
    ]);
    srv.wait_running().await;
    let (status, json) = srv
        .post("/update", "id=cat-003&field=name&value=Cluster TLS")
        .await;
    assert_eq!(status, 200, "{json}");
    srv.read_until("cat-003", "the update", |b| {
        b["record"]["name"] == "Cluster TLS"
    })
    .await;
    // Read back over the nodes' plain ports.
    let mut plain = cluster.redis().await;
    let name: String = redis::cmd("HGET")
        .arg(format!("{prefix}cat-003"))
        .arg("name")
        .query_async(&mut plain)
        .await
        .unwrap();
    assert_eq!(name, "Cluster TLS");
}

/// Turns TLS on in `pg` (its certificate from `certs`, clients' checked
/// against their CA) and makes `role` come in over TLS only, with a client
/// certificate and its password, for SQL and replication.
async fn tls_only(admin: &tokio_postgres::Client, certs: &TestCerts, role: &str) {
    let data: String = admin
        .query_one("SHOW data_directory", &[])
        .await
        .unwrap()
        .get(0);
    let owner = std::fs::metadata(&data).unwrap();
    for (from, name) in [
        (&certs.server_cert, "tls_server.pem"),
        (&certs.server_key, "tls_server.key"),
        (&certs.ca, "tls_ca.pem"),
    ] {
        let to = Path::new(&data).join(name);
        std::fs::copy(from, &to).unwrap();
        std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let hba: String = admin.query_one("SHOW hba_file", &[]).await.unwrap().get(0);
    let old = std::fs::read_to_string(&hba).unwrap();
    let lines = format!(
        "hostssl all {role} 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n\
         hostssl replication {role} 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n\
         host all {role} 127.0.0.1/32 reject\n\
         host replication {role} 127.0.0.1/32 reject\n"
    );
    std::fs::write(&hba, format!("{lines}{old}")).unwrap();
    // One statement each: ALTER SYSTEM refuses a transaction block.
    for statement in [
        "ALTER SYSTEM SET ssl_cert_file = 'tls_server.pem'",
        "ALTER SYSTEM SET ssl_key_file = 'tls_server.key'",
        "ALTER SYSTEM SET ssl_ca_file = 'tls_ca.pem'",
        "ALTER SYSTEM SET ssl = on",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(statement).await.unwrap();
    }
    // The reload is asynchronous: wait until new connections see it.
    for _ in 0..100 {
        let on: String = admin.query_one("SHOW ssl", &[]).await.unwrap().get(0);
        if on == "on" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("ssl did not turn on");
}

#[tokio::test]
async fn postgres_is_reached_over_tls_on_the_sql_and_the_replication_connection() {
    let certs = TestCerts::generate();
    let pg = tokio::task::spawn_blocking(PostgresServer::start)
        .await
        .unwrap()
        .expect("a private PostgreSQL");
    let admin = postgres_client(&pg.url("postgres")).await;
    let role = "pf_tls";
    let password = "Tls-S3cret-55ab";
    admin
        .batch_execute(&format!(
            "CREATE TABLE categories (id text PRIMARY KEY, name text NOT NULL,
                display_order integer NOT NULL DEFAULT 99, featured boolean NOT NULL DEFAULT false,
                parent_id text NOT NULL DEFAULT '');
             INSERT INTO categories (id, name) VALUES ('cat-001','Beverages'),('cat-002','Bakery');
             CREATE PUBLICATION pf_tls_pub FOR TABLE categories;
             CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{password}';
             GRANT SELECT ON categories TO {role};"
        ))
        .await
        .unwrap();
    tls_only(&admin, &certs, role).await;
    let url = |ca: &Path| {
        format!(
            "postgres://{role}:{password}@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}&sslcert={}&sslkey={}",
            pg.port(),
            p(ca),
            p(&certs.client_cert),
            p(&certs.client_key)
        )
    };
    let good = url(&certs.ca);
    let redis = TestRedis::spawn_own(false);
    let flags = |primary: &str| -> Vec<String> {
        [
            "--redis-url",
            &redis.url,
            "--cache-prefix",
            "pgtls:cat:",
            "--primary",
            primary,
            "--pg-table",
            "categories",
            "--pg-publication",
            "pf_tls_pub",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let run = |f: &[String]| Logged::spawn(&f.iter().map(String::as_str).collect::<Vec<_>>());
    let mut srv = run(&flags(&good));
    srv.wait_running().await;
    admin
        .batch_execute("UPDATE categories SET name = 'Through TLS' WHERE id = 'cat-002'")
        .await
        .unwrap();
    srv.read_until("cat-002", "the update", |b| {
        b["record"]["name"] == "Through TLS"
    })
    .await;
    // Every connection of the role is encrypted, the walsender's included.
    let rows = admin
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.usename = $1",
            &[&role],
        )
        .await
        .unwrap();
    let kinds: Vec<(String, bool)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert!(kinds.iter().all(|(_, ssl)| *ssl), "{kinds:?}");
    assert!(kinds.iter().any(|(k, _)| k == "walsender"), "{kinds:?}");
    assert!(
        kinds.iter().any(|(k, _)| k == "client backend"),
        "{kinds:?}"
    );
    drop(srv);

    // A server certificate from another CA: refused, and said why.
    let other = TestCerts::generate();
    let out = run(&flags(&url(&other.ca))).exit_output();
    assert!(
        out.contains("error") && out.to_lowercase().contains("certificate"),
        "{out}"
    );
    assert!(!out.contains(password), "{out}");
}
