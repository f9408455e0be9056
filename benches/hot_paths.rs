//! Criterion benches over the hot paths: decoding a `pos`, hub ingest, encoding a batch.
//!
//! Run with `cargo bench -p beacon --bench hot_paths`.

use std::borrow::Cow;
use std::hint::black_box;
use std::sync::Arc;

use beacon::config::HubConfig;
use beacon::hub::Hub;
use beacon::metrics::Metrics;
use beacon::model::{DeviceId, Fix, GroupId};
use beacon::protocol::{self, Codec, PositionRecord, ServerMessage};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const NOW: i64 = 1_763_780_000_000;

fn pos_json() -> Vec<u8> {
    br#"{"type":"pos","lat":52.520008,"lon":13.404954,"ts":1763780000100,"acc":4.5,"spd":7.9,"hdg":270.5,"batt":81,"seq":41}"#.to_vec()
}

fn pos_msgpack() -> Vec<u8> {
    let value: serde_json::Value = serde_json::from_slice(&pos_json()).expect("valid JSON");
    rmp_serde::to_vec_named(&value).expect("serializable")
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_pos");
    group.throughput(Throughput::Elements(1));
    for (name, codec, bytes) in [
        ("json", Codec::Json, pos_json()),
        ("msgpack", Codec::MsgPack, pos_msgpack()),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| protocol::decode(codec, black_box(&bytes), NOW).expect("valid"))
        });
    }
    group.finish();
}

fn hub_config() -> HubConfig {
    HubConfig {
        tick_ms: 100,
        stale_secs: 120,
        retention_secs: 86_400,
    }
}

fn fix(i: usize) -> Fix {
    Fix {
        lat: 52.0 + i as f64 * 1e-4,
        lon: 13.0,
        ts: NOW + i as i64,
        acc: Some(5.0),
        alt: None,
        spd: Some(8.0),
        hdg: Some(90.0),
        batt: Some(80.0),
    }
}

fn ingest(c: &mut Criterion) {
    let hub = Hub::new(hub_config(), Arc::new(Metrics::new()));
    let groups: Vec<GroupId> = (0..100)
        .map(|g| GroupId::parse(&format!("fleet-{g}")).expect("valid"))
        .collect();
    let devices: Vec<DeviceId> = (0..10_000)
        .map(|d| DeviceId::parse(&format!("bus-{d}")).expect("valid"))
        .collect();
    let mut group = c.benchmark_group("hub");
    group.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    group.bench_function("publish_10k_devices_100_groups", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            let d = i % devices.len();
            hub.publish(
                &devices[d],
                std::slice::from_ref(&groups[d % 100]),
                &fix(i),
                NOW,
            );
        })
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let names: Vec<String> = (0..100).map(|i| format!("bus-{i}")).collect();
    let records: Vec<PositionRecord<'_>> = names
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let f = fix(i);
            PositionRecord {
                id: Cow::Borrowed(id),
                lat: f.lat,
                lon: f.lon,
                ts: f.ts,
                rts: f.ts + 3,
                online: true,
                acc: f.acc,
                alt: f.alt,
                spd: f.spd,
                hdg: f.hdg,
                batt: f.batt,
                name: None,
            }
        })
        .collect();
    let mut group = c.benchmark_group("encode_batch_100");
    group.throughput(Throughput::Elements(100));
    for codec in Codec::ALL {
        group.bench_function(codec.label(), |b| {
            b.iter_batched(
                || (),
                |()| {
                    ServerMessage::Batch {
                        group: "fleet-a",
                        updates: black_box(&records),
                        offline: &[],
                    }
                    .encode(codec)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

#[allow(missing_docs)]
mod group {
    use super::*;
    criterion_group!(benches, decode, ingest, encode);
}
use group::benches;
criterion_main!(benches);
