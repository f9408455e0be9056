//! What judging one fix against a group's geofences costs: with 10,000 polygon fences in the
//! group, and with none (the group holds no rule: one map lookup).
//!
//! The fences: polygons of 8 to 64 vertices, 50 to 400 m across, scattered over a 40 km × 40 km
//! city at 52.5° N (some overlapping). The fixes: 2,000 devices walking at random, one fix each
//! in turn, a few metres per step with a jump across town now and then, so fixes land inside,
//! near and far from fences, and devices enter and leave.
//!
//! Criterion reports the mean and median; the p99 asked of the judging is computed here too,
//! over 100,000 individually timed fixes, and printed.
//!
//! Run with `cargo bench -p beacon --bench geofence`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use beacon::geofence_bench::Engine;
use beacon::model::{DeviceId, Fix};
use criterion::{Criterion, criterion_main};
use serde_json::json;

const FENCES: usize = 10_000;
const DEVICES: usize = 2_000;
const TIMED: usize = 100_000;
const T0: i64 = 1_763_780_000_000;
/// South-west corner and size of the city, degrees.
const LAT0: f64 = 52.3;
const LON0: f64 = 13.1;
const SPAN_LAT: f64 = 0.36;
const SPAN_LON: f64 = 0.59;

/// A fixed-seed generator (64-bit LCG): the same fences and walks on every run.
struct Lcg(u64);

impl Lcg {
    /// A number in `[0, 1)`.
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A star-shaped polygon (never self-intersecting) of `n` vertices around `(lat, lon)`.
fn polygon(rng: &mut Lcg, lat: f64, lon: f64, n: usize) -> serde_json::Value {
    let radius_m = 25.0 + rng.next() * 175.0;
    let mut ring: Vec<[f64; 2]> = (0..n)
        .map(|i| {
            let angle = i as f64 / n as f64 * std::f64::consts::TAU;
            let r = radius_m * (0.6 + 0.4 * rng.next());
            let dlat = r * angle.sin() / 111_195.0;
            let dlon = r * angle.cos() / (111_195.0 * lat.to_radians().cos());
            [lon + dlon, lat + dlat]
        })
        .collect();
    ring.push(ring[0]);
    json!({"type": "Polygon", "coordinates": [ring]})
}

/// An engine holding `FENCES` polygons.
fn engine_with_fences() -> Engine {
    let engine = Engine::new();
    let mut rng = Lcg(15);
    for i in 0..FENCES {
        let lat = LAT0 + rng.next() * SPAN_LAT;
        let lon = LON0 + rng.next() * SPAN_LON;
        let vertices = 8 + (rng.next() * 57.0) as usize;
        engine
            .add(json!({
                "name": format!("fence {i}"),
                "geometry": polygon(&mut rng, lat, lon, vertices),
                "dwell_s": 300,
            }))
            .expect("a valid fence");
    }
    engine
}

/// Devices walking about the city; `next` gives the next fix of the next device.
struct Walk {
    rng: Lcg,
    devices: Vec<DeviceId>,
    places: Vec<(f64, f64)>,
    turn: usize,
    ts: i64,
}

impl Walk {
    fn new() -> Walk {
        let mut rng = Lcg(7);
        let places = (0..DEVICES)
            .map(|_| (LAT0 + rng.next() * SPAN_LAT, LON0 + rng.next() * SPAN_LON))
            .collect();
        Walk {
            rng,
            devices: (0..DEVICES)
                .map(|i| DeviceId::parse(&format!("car-{i}")).expect("valid id"))
                .collect(),
            places,
            turn: 0,
            ts: T0,
        }
    }

    fn next(&mut self) -> (usize, Fix) {
        let d = self.turn % DEVICES;
        self.turn += 1;
        if d == 0 {
            self.ts += 1000;
        }
        let (lat, lon) = &mut self.places[d];
        if self.rng.next() < 0.01 {
            *lat = LAT0 + self.rng.next() * SPAN_LAT;
            *lon = LON0 + self.rng.next() * SPAN_LON;
        } else {
            *lat += (self.rng.next() - 0.5) * 0.0002;
            *lon += (self.rng.next() - 0.5) * 0.0003;
        }
        (d, Fix::new(*lat, *lon, self.ts))
    }
}

/// Times `TIMED` fixes one by one and prints their percentiles.
fn percentiles(name: &str, engine: &Engine, walk: &mut Walk) {
    let mut took: Vec<Duration> = Vec::with_capacity(TIMED);
    let judged_before = engine.fences_judged();
    for _ in 0..TIMED {
        let (d, fix) = walk.next();
        let started = Instant::now();
        engine.judge(&walk.devices[d], black_box(&fix));
        took.push(started.elapsed());
    }
    took.sort_unstable();
    let at = |q: f64| took[((TIMED as f64 * q) as usize).min(TIMED - 1)];
    let mean = took.iter().sum::<Duration>() / TIMED as u32;
    println!(
        "{name}: {TIMED} fixes timed one by one: mean {mean:?}, p50 {:?}, p99 {:?}, \
         p99.9 {:?}, max {:?}; fences judged per fix {:.2}; events so far {}",
        at(0.50),
        at(0.99),
        at(0.999),
        took[TIMED - 1],
        (engine.fences_judged() - judged_before) as f64 / TIMED as f64,
        engine.events(),
    );
}

fn geofence(c: &mut Criterion) {
    let started = Instant::now();
    let fenced = engine_with_fences();
    println!("{FENCES} polygon fences made in {:?}", started.elapsed());
    let empty = Engine::new();

    let mut bench = c.benchmark_group("geofence_judge_one_fix");
    bench.measurement_time(Duration::from_secs(10));
    let mut walk = Walk::new();
    // Every device has a side before anything is measured.
    for _ in 0..DEVICES * 3 {
        let (d, fix) = walk.next();
        fenced.judge(&walk.devices[d], &fix);
    }
    bench.bench_function("10000_polygons", |b| {
        b.iter(|| {
            let (d, fix) = walk.next();
            fenced.judge(&walk.devices[d], black_box(&fix));
        })
    });
    let mut idle = Walk::new();
    bench.bench_function("no_fences", |b| {
        b.iter(|| {
            let (d, fix) = idle.next();
            empty.judge(&idle.devices[d], black_box(&fix));
        })
    });
    bench.finish();

    percentiles("10000_polygons", &fenced, &mut walk);
    percentiles("no_fences", &empty, &mut idle);
}

fn benches() {
    let mut criterion = Criterion::default().configure_from_args();
    geofence(&mut criterion);
}

criterion_main!(benches);
