//! Statistics of one device's day of 1 Hz fixes (86,400 points): the computation alone, and
//! the whole read as the route does it (one pass over the store's range, then the summary).
//!
//! The day: a drive, a stop, and so on, with a few metres of noise on every fix, so every
//! stage of the computation (outliers, clusters, stops, trips, speed windows) works.
//!
//! Run with `cargo bench -p beacon --bench stats`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use beacon::config::StoreConfig;
use beacon::metrics::Metrics;
use beacon::model::{DeviceId, Fix, GroupId};
use beacon::stats::{Rules, Stats};
use beacon::store::{HistoryScope, Store};
use criterion::{Criterion, Throughput, criterion_main};

const POINTS: usize = 86_400;
const T0: i64 = 1_763_780_000_000;

/// The day: 40 minutes of driving at 14 m/s, then 20 minutes parked, over and over, with up to
/// 4 m of noise (6 m parked) and one 3 km spike an hour.
fn day() -> Vec<Fix> {
    let mut seed: u64 = 3;
    let mut noise = move || {
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (seed >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    };
    let metres_per_degree = 111_195.0;
    let (mut lat, mut lon) = (52.5f64, 13.4f64);
    (0..POINTS)
        .map(|i| {
            let driving = i % 3600 < 2400;
            if driving {
                let heading = (i / 600) as f64;
                lat += 14.0 * heading.cos() / metres_per_degree;
                lon += 14.0 * heading.sin() / (metres_per_degree * lat.to_radians().cos());
            }
            let jitter = if driving { 4.0 } else { 6.0 };
            let spike = if i % 3600 == 1234 { 3000.0 } else { 0.0 };
            let mut fix = Fix::new(
                lat + (noise() * jitter + spike) / metres_per_degree,
                lon + noise() * jitter / metres_per_degree,
                T0 + i as i64 * 1000,
            );
            fix.acc = Some(6.0);
            fix.spd = Some(if driving { 14.0 } else { 0.0 });
            fix
        })
        .collect()
}

fn config() -> StoreConfig {
    StoreConfig {
        history_retention_days: 36_500,
        history_min_interval_secs: 0,
        history_min_distance_m: 0.0,
        history_max_points: 10_000_000,
        history_prune_secs: 86_400,
        store_queue_positions: 200_000,
    }
}

fn stats(c: &mut Criterion) {
    let fixes = day();
    let mut bench = c.benchmark_group("stats_day_1hz");
    bench.throughput(Throughput::Elements(POINTS as u64));
    bench.sample_size(20);
    bench.measurement_time(Duration::from_secs(10));

    bench.bench_function("computation", |b| {
        b.iter(|| {
            let mut stats = Stats::new(Rules::default());
            for fix in &fixes {
                stats.push(fix);
            }
            stats.finish()
        })
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    let dir = tempfile::tempdir().expect("a temporary directory");
    let metrics = Arc::new(Metrics::new());
    let store = Store::open(dir.path(), &config(), metrics.clone()).expect("store opens");
    let device = DeviceId::parse("car").expect("valid id");
    let group = GroupId::parse("fleet").expect("valid id");
    let observer = store.observer();
    for fix in &fixes {
        observer.published(&device, std::slice::from_ref(&group), fix, fix.ts);
    }
    let started = Instant::now();
    while metrics.store.written.get() < POINTS as u64 {
        assert!(started.elapsed() < Duration::from_secs(120), "store write");
        std::thread::sleep(Duration::from_millis(5));
    }
    let scope = HistoryScope::Groups(vec![group.clone()]);
    let visit: fn(&mut Stats, &Fix) = |stats, fix| stats.push(fix);
    let read = || async {
        store
            .scan(
                &device,
                &scope,
                T0,
                T0 + POINTS as i64 * 1000,
                Stats::new(Rules::default()),
                visit,
            )
            .await
            .expect("store read")
            .finish()
    };
    let summary = runtime.block_on(read());
    assert_eq!(summary.points, POINTS as u64);
    eprintln!(
        "the day: {} m in {} s moving, {} trips, {} stops, {} outliers",
        summary.distance_m,
        summary.moving_s,
        summary.trips.len(),
        summary.stops.len(),
        summary.outliers
    );
    bench.bench_function("from_store", |b| {
        b.to_async(&runtime).iter(read);
    });
    bench.finish();
    runtime.block_on(store.close(Duration::from_secs(60)));
}

// `criterion_group!` defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::stats;
    criterion::criterion_group!(benches, stats);
}
criterion_main!(group::benches);
