//! The mock primary on its own: seed data, counted reads, validation,
//! transactions, and the ordering guarantee of its change feed.

use std::collections::BTreeMap;
use std::time::Duration;

use prefetch::{
    ChangeKind, Error, EventBus, Fields, MockPrimary, Mutation, Record, Source, Version,
};

#[tokio::test]
async fn seed_is_the_five_reference_categories_in_order() {
    let primary = MockPrimary::new(Duration::ZERO, EventBus::default());
    let (records, version) = primary.list_records().await;
    assert_eq!(version, Version::new(0, u32::MAX), "before any change");
    let rows: Vec<(&str, &str, &str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r.get("id").unwrap(),
                r.get("name").unwrap(),
                r.get("display_order").unwrap(),
                r.get("featured").unwrap(),
                r.get("parent_id").unwrap(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("cat-001", "Beverages", "1", "true", ""),
            ("cat-002", "Bakery", "2", "true", ""),
            ("cat-003", "Pantry Staples", "3", "false", ""),
            ("cat-004", "Frozen", "4", "false", ""),
            ("cat-005", "Specialty Cheeses", "5", "false", "cat-002"),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn snapshots_are_counted_and_take_the_configured_latency_but_ids_are_free() {
    let primary = MockPrimary::new(Duration::from_millis(80), EventBus::default());
    let started = tokio::time::Instant::now();
    let snapshot = primary.snapshot().await.unwrap();
    assert_eq!(started.elapsed(), Duration::from_millis(80));
    assert_eq!(snapshot.version, Version::new(0, u32::MAX));
    assert!(primary.read("cat-003").await.is_some());
    assert!(primary.read("nope").await.is_none());
    assert_eq!(primary.list_ids().len(), 5);
    primary.inspect();
    assert_eq!(primary.reads(), 3);
    primary.reset_reads();
    assert_eq!(primary.reads(), 0);
}

#[tokio::test]
async fn mutations_validate_input_and_refuse_unknown_or_duplicate_ids() {
    let primary = MockPrimary::new(Duration::ZERO, EventBus::default());
    assert!(matches!(
        primary.update_field("cat-404", "name", "x"),
        Err(Error::NotFound(_))
    ));
    assert!(matches!(primary.delete("cat-404"), Err(Error::NotFound(_))));
    assert!(matches!(
        primary.update_field("cat-001", "id", "x"),
        Err(Error::InvalidField(_))
    ));
    assert!(matches!(
        primary.update_field("cat-001", "__v", "x"),
        Err(Error::InvalidField(_))
    ));
    assert!(matches!(
        primary.update_field(" ", "name", "x"),
        Err(Error::InvalidId(_))
    ));
    let dup: Record = [("id", "cat-001"), ("name", "again")].into_iter().collect();
    assert!(matches!(primary.add(dup), Err(Error::AlreadyExists(_))));
    let no_id: Record = [("name", "x")].into_iter().collect();
    assert!(matches!(primary.add(no_id), Err(Error::InvalidId(_))));
    assert_eq!(primary.head(), None, "refused mutations commit nothing");
    assert_eq!(primary.status().backlog, 0);

    let padded: Record = [("id", "  cat-777 "), ("name", "Padded")]
        .into_iter()
        .collect();
    let change = primary.add(padded).unwrap();
    assert_eq!(change.id, "cat-777");
    let pulled = primary.pull(100).await.unwrap();
    assert_eq!(pulled.len(), 1);
    let got = &pulled[0].changes[0];
    assert_eq!(got.version, Version::new(1, 0));
    let ChangeKind::Upsert(fields) = &got.kind else {
        panic!("upsert expected")
    };
    assert_eq!(fields.get("id").map(String::as_str), Some("cat-777"));
}

#[tokio::test]
async fn a_transaction_commits_its_writes_together_under_one_position() {
    let primary = MockPrimary::new(Duration::ZERO, EventBus::default());
    let rec = |id: &str| -> Record { [("id", id), ("name", "T")].into_iter().collect() };
    let changes = primary
        .transaction(vec![
            Mutation::Put(rec("t-1")),
            Mutation::Delete("cat-001".into()),
            Mutation::Delete("missing".into()),
            Mutation::Put(rec("t-2")),
        ])
        .unwrap();
    assert_eq!(changes.len(), 3, "deleting a missing id is a no-op");
    let versions: Vec<Version> = changes.iter().map(|c| c.version).collect();
    assert_eq!(
        versions,
        [Version::new(1, 0), Version::new(1, 1), Version::new(1, 2)]
    );
    let pulled = primary.pull(100).await.unwrap();
    assert_eq!(pulled.len(), 1, "one transaction");
    assert_eq!(pulled[0].position, Version::new(1, 2));
    assert_eq!(primary.list_ids().len(), 6);
}

#[tokio::test]
async fn acknowledged_changes_are_gone_and_the_rest_come_back_after_reopening() {
    let primary = MockPrimary::new(Duration::ZERO, EventBus::default());
    for i in 0..5 {
        primary
            .update_field("cat-001", "name", &i.to_string())
            .unwrap();
    }
    let first = primary.pull(2).await.unwrap();
    assert_eq!(first.len(), 2);
    primary.ack(first[1].position).await.unwrap();
    // A consumer that restarts from the stored position gets the rest again.
    assert!(primary.open(Some(first[1].position)).await.unwrap());
    let rest = primary.pull(100).await.unwrap();
    assert_eq!(rest.len(), 3);
    assert_eq!(rest[0].position, Version::new(3, 0));
    // It cannot resume from before what it acknowledged.
    assert!(!primary.open(Some(Version::ZERO)).await.unwrap());
}

#[test]
fn changes_leave_the_primary_in_mutation_order_under_contention() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let primary = MockPrimary::new(Duration::ZERO, EventBus::default());
    let ids = ["cat-001", "cat-002", "cat-003"];
    std::thread::scope(|s| {
        for t in 0..8 {
            let primary = primary.clone();
            s.spawn(move || {
                for i in 0..5000 {
                    let id = ids[(i + t) % ids.len()];
                    primary
                        .update_field(id, "name", &format!("{t}-{i}"))
                        .unwrap();
                }
            });
        }
    });
    let mut last: BTreeMap<String, Fields> = BTreeMap::new();
    let mut expected = 1;
    runtime.block_on(async {
        loop {
            let batch = primary.pull(4096).await.unwrap();
            for tx in &batch {
                assert_eq!(
                    tx.position,
                    Version::new(expected, 0),
                    "feed order must equal mutation order"
                );
                expected += 1;
                for change in &tx.changes {
                    if let ChangeKind::Upsert(fields) = &change.kind {
                        last.insert(change.id.clone(), (**fields).clone());
                    }
                }
            }
            if expected > 40_000 {
                break;
            }
        }
    });
    assert_eq!(expected - 1, 40_000);
    for id in ids {
        let record = runtime.block_on(primary.read(id)).unwrap();
        assert_eq!(
            &last[id],
            record.fields(),
            "last change for {id} is its final state"
        );
    }
}
