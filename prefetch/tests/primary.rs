//! The mock primary on its own: seed data, counted reads, validation, and the
//! ordering guarantee of its change feed.

use std::collections::BTreeMap;
use std::time::Duration;

use prefetch::{ChangeKind, Error, EventBus, Fields, MockPrimary, Record};

#[tokio::test]
async fn seed_is_the_five_reference_categories_in_order() {
    let (primary, _feed) = MockPrimary::new(Duration::ZERO, EventBus::default());
    let records = primary.list_records().await;
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
async fn reads_are_counted_and_take_the_configured_latency_but_ids_are_free() {
    let (primary, _feed) = MockPrimary::new(Duration::from_millis(80), EventBus::default());
    let started = tokio::time::Instant::now();
    primary.list_records().await;
    assert_eq!(started.elapsed(), Duration::from_millis(80));
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
    let (primary, mut feed) = MockPrimary::new(Duration::ZERO, EventBus::default());
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
        primary.update_field(" ", "name", "x"),
        Err(Error::InvalidId(_))
    ));
    let dup: Record = [("id", "cat-001"), ("name", "again")].into_iter().collect();
    assert!(matches!(primary.add(dup), Err(Error::AlreadyExists(_))));
    let no_id: Record = [("name", "x")].into_iter().collect();
    assert!(matches!(primary.add(no_id), Err(Error::InvalidId(_))));
    assert_eq!(primary.last_seq(), 0, "refused mutations emit nothing");
    assert!(feed.is_empty());

    let padded: Record = [("id", "  cat-777 "), ("name", "Padded")]
        .into_iter()
        .collect();
    let change = primary.add(padded).unwrap();
    assert_eq!(change.id, "cat-777");
    let got = feed.recv().await.unwrap();
    assert_eq!(got.seq, 1);
    let ChangeKind::Upsert(fields) = got.kind else {
        panic!("upsert expected")
    };
    assert_eq!(fields.get("id").map(String::as_str), Some("cat-777"));
}

#[test]
fn events_leave_the_primary_in_mutation_order_under_contention() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (primary, mut feed) = MockPrimary::new(Duration::ZERO, EventBus::default());
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
    let mut expected_seq = 1;
    runtime.block_on(async {
        while let Ok(Some(change)) =
            tokio::time::timeout(Duration::from_millis(50), feed.recv()).await
        {
            assert_eq!(
                change.seq, expected_seq,
                "feed order must equal mutation order"
            );
            expected_seq += 1;
            if let ChangeKind::Upsert(fields) = change.kind {
                last.insert(change.id, fields);
            }
        }
    });
    assert_eq!(expected_seq - 1, 40_000);
    for id in ids {
        let record = runtime.block_on(primary.read(id)).unwrap();
        assert_eq!(
            &last[id],
            record.fields(),
            "last event for {id} is its final state"
        );
    }
}
