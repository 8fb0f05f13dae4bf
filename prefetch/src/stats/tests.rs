//! The histogram's buckets and quantiles, the counters' reset.

use super::*;

#[test]
fn buckets_are_monotonic_and_tight() {
    let mut last = 0;
    for v in (0..1_000_000u64).step_by(7) {
        let b = bucket_of(v);
        assert!(b >= last, "bucket order broke at {v}");
        last = b;
        let mid = bucket_mid(b);
        assert!(
            (mid - v as f64).abs() <= (v as f64 / 16.0).max(0.5),
            "{v} -> {mid}"
        );
    }
    assert!(bucket_of(u64::MAX) < BUCKETS);
}

#[test]
fn quantiles_follow_the_recorded_distribution() {
    let h = LagHistogram::default();
    for us in 1..=1000u64 {
        h.record(Duration::from_micros(us * 10));
    }
    let [p50, p99] = h.quantiles_us([0.5, 0.99]);
    assert!((p50 - 5000.0).abs() < 5000.0 / 16.0 + 1.0, "p50 {p50}");
    assert!((p99 - 9900.0).abs() < 9900.0 / 16.0 + 1.0, "p99 {p99}");
    assert_eq!(h.max_us(), 10_000);
    assert!((h.mean_us() - 5005.0).abs() < 0.01);
}

#[test]
fn the_hit_ratio_is_raw_and_a_reset_zeroes_everything() {
    let c = Counters::default();
    c.hits.store(2, Relaxed);
    c.misses.store(1, Relaxed);
    assert!((c.snapshot().hit_ratio() - 2.0 / 3.0).abs() < 1e-12);
    c.lag.record(Duration::from_millis(3));
    assert_eq!(c.snapshot().sync_lag.count, 1);
    c.reset();
    assert_eq!(c.snapshot(), Stats::default());
}
