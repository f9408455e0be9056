//! Property tests: codec round trips, and decoding never panics on arbitrary input.

use std::borrow::Cow;

use beacon::protocol::{self, ClientMessage, Codec, Frame, PositionRecord, ServerMessage};
use proptest::prelude::*;
use serde_json::{Value, json};

const NOW: i64 = 1_763_780_000_000;

fn encode_client(value: &Value, codec: Codec) -> Vec<u8> {
    match codec {
        Codec::Json => value.to_string().into_bytes(),
        Codec::MsgPack => rmp_serde::to_vec_named(value).expect("serializable"),
    }
}

fn codec() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::Json), Just(Codec::MsgPack)]
}

fn id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9._:@-]{1,64}"
}

prop_compose! {
    fn record()(
        id in id(),
        lat in -90.0f64..=90.0,
        lon in -180.0f64..=180.0,
        ts in protocol::MIN_FIX_TS_MS..=NOW,
        rts in 0i64..=NOW,
        online in any::<bool>(),
        acc in proptest::option::of(0.0f64..1e4),
        alt in proptest::option::of(-500.0f64..9000.0),
        spd in proptest::option::of(0.0f64..100.0),
        hdg in proptest::option::of(0.0f64..=360.0),
        batt in proptest::option::of(0.0f64..=100.0),
    ) -> PositionRecord<'static> {
        PositionRecord { id: Cow::Owned(id), lat, lon, ts, rts, online, acc, alt, spd, hdg, batt, name: None }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn valid_pos_round_trips(codec in codec(), r in record(), seq in proptest::option::of(any::<u64>())) {
        let mut message = json!({"type": "pos", "lat": r.lat, "lon": r.lon, "ts": r.ts});
        for (key, v) in [("acc", r.acc), ("alt", r.alt), ("spd", r.spd), ("hdg", r.hdg), ("batt", r.batt)] {
            if let Some(v) = v {
                message[key] = json!(v);
            }
        }
        if let Some(seq) = seq {
            message["seq"] = json!(seq);
        }
        let bytes = encode_client(&message, codec);
        let decoded = protocol::decode(codec, &bytes, NOW).expect("valid pos");
        let ClientMessage::Pos { fix, seq: got_seq } = decoded else { panic!("not a pos") };
        prop_assert_eq!(got_seq, seq);
        prop_assert_eq!(fix.lat, r.lat);
        prop_assert_eq!(fix.lon, r.lon);
        prop_assert_eq!(fix.ts, r.ts);
        prop_assert_eq!((fix.acc, fix.alt, fix.spd, fix.hdg, fix.batt), (r.acc, r.alt, r.spd, r.hdg, r.batt));
    }

    #[test]
    fn batches_round_trip(codec in codec(), records in proptest::collection::vec(record(), 0..20), offline in proptest::collection::vec(id(), 0..5)) {
        let offline_refs: Vec<&str> = offline.iter().map(String::as_str).collect();
        let frame = ServerMessage::Batch { group: "g", updates: &records, offline: &offline_refs }.encode(codec);
        let value: Value = match frame {
            Frame::Text(t) => { prop_assert_eq!(codec, Codec::Json); serde_json::from_str(t.as_str()).unwrap() }
            Frame::Binary(b) => { prop_assert_eq!(codec, Codec::MsgPack); rmp_serde::from_slice(&b).unwrap() }
        };
        prop_assert_eq!(&value["type"], "batch");
        let updates = value["updates"].to_string();
        let back: Vec<PositionRecord<'_>> = serde_json::from_str(&updates).unwrap();
        prop_assert_eq!(back, records);
        prop_assert_eq!(value["offline"].clone(), json!(offline));
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(codec in codec(), bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = protocol::decode(codec, &bytes, NOW);
    }

    #[test]
    fn out_of_range_latitudes_are_refused(codec in codec(), lat in prop_oneof![-1e9f64..-90.000001, 90.000001f64..1e9]) {
        let bytes = encode_client(&json!({"type": "pos", "lat": lat, "lon": 0}), codec);
        let refusal = protocol::decode(codec, &bytes, NOW).unwrap_err();
        prop_assert_eq!(refusal.code.as_str(), "invalid_position");
    }
}
