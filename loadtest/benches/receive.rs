//! What one received frame costs the harness: decoding it, updating the subscriber's view,
//! counting, and recording the latency of every new fix.
//!
//! The frames are shaped like the server's `batch` frames in the fleet scenario: groups of 100
//! devices reporting once a second, a 100 ms tick, so ten updates per frame, every one of them
//! newer than what the subscriber holds.
//!
//! Run with `cargo bench -p beacon-loadtest --bench receive`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use beacon_loadtest::clock::now_ms;
use beacon_loadtest::config::{Cli, Codec, Plan, Target};
use beacon_loadtest::latest::View;
use beacon_loadtest::session::{Session, Step};
use beacon_loadtest::shared::WorkerShared;
use beacon_loadtest::spec::{ClientSpec, device_id, group_id};
use bytes::Bytes;
use clap::Parser;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

const DEVICES: u32 = 10_000;
const GROUP_SIZE: u32 = 100;
const PER_FRAME: u32 = 10;
const FRAMES: u32 = 1_000;

/// A position record as the server writes it.
#[derive(Serialize)]
struct Record {
    id: String,
    lat: f64,
    lon: f64,
    ts: u64,
    rts: u64,
    online: bool,
    acc: f64,
    spd: f64,
    hdg: f64,
}

/// A `batch` frame as the server writes it.
#[derive(Serialize)]
struct Batch<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    group: &'a str,
    updates: Vec<Record>,
    offline: Vec<String>,
}

fn plan(codec: &str) -> Plan {
    let cli = Cli::parse_from([
        "beacon-loadtest",
        "--scenario",
        "fleet",
        "--devices",
        &DEVICES.to_string(),
        "--group-size",
        &GROUP_SIZE.to_string(),
        "--codec",
        codec,
    ]);
    let target = Target {
        url: "ws://127.0.0.1:1/v1/ws".into(),
        addr: "127.0.0.1:1".parse().expect("valid address"),
        loopback: true,
    };
    Plan::build(&cli, vec![target], 1, "lt1".into()).expect("valid plan")
}

/// The batches group 0 receives over `FRAMES` ticks, each device's fixes newer every time.
fn frames(plan: &Plan, codec: Codec) -> Vec<Message> {
    let start = now_ms();
    let groups = plan.groups;
    let group = group_id(&plan.run_id, 0);
    (0..FRAMES)
        .map(|k| {
            let updates = (0..PER_FRAME)
                .map(|j| {
                    let n = k * PER_FRAME + j;
                    let device = (n % GROUP_SIZE) * groups;
                    let ts = start + u64::from(n);
                    Record {
                        id: device_id(&plan.run_id, device),
                        lat: 52.520_000_4 + f64::from(n % 97) * 1.3e-5,
                        lon: 13.405_012_3 - f64::from(n % 89) * 1.1e-5,
                        ts,
                        rts: ts + 2,
                        online: true,
                        acc: 5.0,
                        spd: 7.89,
                        hdg: 270.0,
                    }
                })
                .collect();
            let batch = Batch {
                kind: "batch",
                group: &group,
                updates,
                offline: Vec::new(),
            };
            match codec {
                Codec::Json => Message::text(serde_json::to_string(&batch).expect("serializable")),
                Codec::Msgpack => Message::Binary(Bytes::from(
                    rmp_serde::to_vec_named(&batch).expect("serializable"),
                )),
            }
        })
        .collect()
}

fn receive(c: &mut Criterion) {
    let mut group = c.benchmark_group("receive_batch");
    group.throughput(Throughput::Elements(u64::from(PER_FRAME)));
    for (name, codec) in [("json", Codec::Json), ("msgpack", Codec::Msgpack)] {
        let plan = Arc::new(plan(name));
        let frames = frames(&plan, codec);
        let w = WorkerShared::new(plan.clone());
        let spec = ClientSpec::new(&plan, 0);
        assert_eq!((spec.group, spec.codec), (0, codec));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let mut left = iters;
                while left > 0 {
                    // A fresh view for each pass over the frames, so every update is new again.
                    let view = View::new(&w.layout, 0);
                    let mut session = Session::new(&w, &spec, &view);
                    let n = left.min(frames.len() as u64);
                    for frame in &frames[..n as usize] {
                        black_box(session.on_message(black_box(frame)) == Step::Continue);
                    }
                    left -= n;
                }
                start.elapsed()
            })
        });
        // Zero frames when a filter skipped this codec.
        let stats = w.counters.snapshot();
        assert_eq!(stats.malformed_frames, 0);
        assert_eq!(
            stats.updates_received,
            stats.frames_received * u64::from(PER_FRAME)
        );
    }
    group.finish();
}

#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, receive);
}
use group::benches;
criterion_main!(benches);
