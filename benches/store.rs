//! Write-behind throughput of the durable store: how many fixes per second the writer thread
//! puts into SQLite when the hub hands it one tick after another as fast as it can take them.
//!
//! Each iteration is one tick of 1000 devices in 10 groups, each fix handed to the store's hub
//! observer exactly as `Hub::publish` does; the clock stops once the writer has committed every
//! one. The
//! feeder waits whenever the queue is half full, so nothing is dropped (checked at the end) and
//! the figure is the writer's sustained rate, batching included.
//!
//! Run with `cargo bench -p beacon --bench store`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use beacon::config::StoreConfig;
use beacon::metrics::Metrics;
use beacon::model::{DeviceId, Fix, GroupId, Position};
use beacon::store::Store;
use criterion::{Criterion, Throughput, criterion_main};

const DEVICES: usize = 1000;
const GROUPS: usize = 10;
const QUEUE: u64 = 65_536;
const T0: i64 = 1_763_780_000_000;

fn config(min_interval_secs: u64) -> StoreConfig {
    StoreConfig {
        history_retention_days: 36_500,
        history_min_interval_secs: min_interval_secs,
        history_min_distance_m: 0.0,
        history_max_points: 10_000_000,
        history_prune_secs: 86_400,
        store_queue_positions: QUEUE,
    }
}

/// One tick: every device reports once, one second after its previous fix.
struct Ticks {
    devices: Vec<DeviceId>,
    groups: Vec<GroupId>,
    tick: i64,
}

impl Ticks {
    fn new() -> Self {
        Ticks {
            devices: (0..DEVICES)
                .map(|i| DeviceId::parse(&format!("device-{i:05}")).expect("valid id"))
                .collect(),
            groups: (0..GROUPS)
                .map(|i| GroupId::parse(&format!("group-{i}")).expect("valid id"))
                .collect(),
            tick: 0,
        }
    }

    fn next(&mut self) -> Vec<(GroupId, Vec<Position>)> {
        self.tick += 1;
        let ts = T0 + self.tick * 1000;
        let per_group = DEVICES / GROUPS;
        self.groups
            .iter()
            .enumerate()
            .map(|(g, group)| {
                let positions = self.devices[g * per_group..(g + 1) * per_group]
                    .iter()
                    .enumerate()
                    .map(|(i, device)| Position {
                        device: device.clone(),
                        fix: Fix {
                            lat: 52.0 + (self.tick as f64) * 1e-5,
                            lon: 13.0 + (i as f64) * 1e-4,
                            ts,
                            acc: Some(5.0),
                            alt: Some(40.0),
                            spd: Some(8.3),
                            hdg: Some(90.0),
                            batt: Some(80.0),
                        },
                        rts: ts + 20,
                        online: true,
                    })
                    .collect();
                (group.clone(), positions)
            })
            .collect()
    }
}

fn write_behind(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let mut bench = c.benchmark_group("store_write_behind");
    bench.throughput(Throughput::Elements(DEVICES as u64));
    bench.measurement_time(Duration::from_secs(10));
    for (name, min_interval) in [("every_fix_stored", 0), ("downsampled_5s", 5)] {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let metrics = Arc::new(Metrics::new());
        let store =
            Store::open(dir.path(), &config(min_interval), metrics.clone()).expect("store opens");
        let observer = store.observer();
        let mut ticks = Ticks::new();
        bench.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let target = metrics.store.written.get() + iters * DEVICES as u64;
                let started = Instant::now();
                for _ in 0..iters {
                    while metrics.store.queued.get() as u64 > QUEUE / 2 {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    for (group, positions) in ticks.next() {
                        let groups = std::slice::from_ref(&group);
                        for p in &positions {
                            observer.published(&p.device, groups, &p.fix, p.rts);
                        }
                    }
                }
                while metrics.store.written.get() < target {
                    std::thread::sleep(Duration::from_micros(200));
                }
                started.elapsed()
            })
        });
        assert_eq!(
            metrics.store.dropped.get(),
            0,
            "the feeder never overran the queue"
        );
        assert_eq!(metrics.store.errors.get(), 0);
        runtime.block_on(store.close(Duration::from_secs(60)));
        eprintln!(
            "{name}: {} positions written, {} history points",
            metrics.store.written.get(),
            metrics.store.track_points.get()
        );
    }
    bench.finish();
}

// `criterion_group!` defines an undocumented public function.
#[allow(missing_docs)]
mod group {
    use super::write_behind;
    criterion::criterion_group!(benches, write_behind);
}
criterion_main!(group::benches);
