//! The client's side of the wire protocol: encoding `pos`, decoding server frames.
//!
//! Only the fields the harness needs are decoded; everything else (and any field added
//! later) is skipped. Strings borrow from the frame where the codec allows, so decoding a
//! batch of a hundred updates allocates little.

use std::borrow::Cow;

use anyhow::Context;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use crate::config::Codec;
use crate::path::Fix;

/// A `pos` message as sent.
#[derive(Debug, Serialize)]
struct PosOut {
    #[serde(rename = "type")]
    kind: &'static str,
    lat: f64,
    lon: f64,
    ts: u64,
    acc: f64,
    spd: f64,
    hdg: f64,
    seq: u64,
}

/// Encodes a fix stamped `ts` (ms since epoch) as a frame of the given codec.
pub(crate) fn encode_pos(codec: Codec, fix: &Fix, ts: u64, seq: u64) -> anyhow::Result<Message> {
    let pos = PosOut {
        kind: "pos",
        lat: round_to(fix.lat, 1e7),
        lon: round_to(fix.lon, 1e7),
        ts,
        acc: fix.acc,
        spd: round_to(fix.spd, 100.0),
        hdg: fix.hdg,
        seq,
    };
    Ok(match codec {
        Codec::Json => Message::text(serde_json::to_string(&pos).context("encoding pos as JSON")?),
        Codec::Msgpack => Message::Binary(Bytes::from(
            rmp_serde::to_vec_named(&pos).context("encoding pos as MessagePack")?,
        )),
    })
}

fn round_to(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

/// A server frame, with only the fields the harness reads.
///
/// One flat struct rather than a tagged enum: it decodes the same way from JSON and from
/// MessagePack maps without buffering, and unknown types simply keep their `kind`.
#[derive(Debug, Deserialize)]
pub(crate) struct ServerFrame<'a> {
    /// `welcome`, `snapshot`, `batch`, `pong`, `error`, or something newer.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// Group of a `snapshot` or `batch`. Read only by the codec tests; still decoded, so
    /// that a frame whose `group` is not a string counts as malformed.
    #[serde(borrow, default)]
    #[allow(dead_code)]
    pub group: Option<Cow<'a, str>>,
    /// Positions of a `snapshot`.
    #[serde(borrow, default)]
    pub devices: Option<Vec<Record<'a>>>,
    /// Positions of a `batch`.
    #[serde(borrow, default)]
    pub updates: Option<Vec<Record<'a>>>,
    /// Devices that went offline, in a `batch`.
    #[serde(borrow, default)]
    pub offline: Option<Vec<Cow<'a, str>>>,
    /// Error code of an `error`.
    #[serde(borrow, default)]
    pub code: Option<Cow<'a, str>>,
    /// Fan-out tick of the server, in a `welcome`.
    #[serde(default)]
    pub tick_ms: Option<f64>,
}

/// A position record: only identity and fix time matter to the harness.
#[derive(Debug, Deserialize)]
pub(crate) struct Record<'a> {
    /// Device id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Fix time, ms since epoch (integer or float on the wire).
    pub ts: f64,
    /// Server receive time, ms since epoch.
    #[serde(default)]
    pub rts: Option<f64>,
}

/// Decodes one data frame; `None` for frames that carry no message (ping, pong, close).
///
/// The `Err` case distinguishes a frame of the wrong kind for the codec from an undecodable one.
pub(crate) fn decode<'a>(
    codec: Codec,
    msg: &'a Message,
) -> Option<Result<ServerFrame<'a>, DecodeError>> {
    Some(match (codec, msg) {
        (Codec::Json, Message::Text(text)) => {
            serde_json::from_str(text.as_str()).map_err(|_| DecodeError::Malformed)
        }
        (Codec::Msgpack, Message::Binary(bytes)) => {
            rmp_serde::from_slice(bytes).map_err(|_| DecodeError::Malformed)
        }
        (_, Message::Text(_)) | (_, Message::Binary(_)) => Err(DecodeError::WrongFrameKind),
        _ => return None,
    })
}

/// Why a server frame could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DecodeError {
    /// Text frame on a MessagePack connection or binary frame on a JSON one.
    WrongFrameKind,
    /// Not a message of the protocol.
    Malformed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix() -> Fix {
        Fix {
            lat: 52.520_000_04,
            lon: 13.405,
            spd: 7.891,
            hdg: 270.0,
            acc: 5.0,
        }
    }

    #[test]
    fn pos_encodes_with_named_keys_in_both_codecs() {
        let Message::Text(json) = encode_pos(Codec::Json, &fix(), 1_763_780_000_100, 41).unwrap()
        else {
            panic!("JSON must be a text frame")
        };
        let v: serde_json::Value = serde_json::from_str(json.as_str()).unwrap();
        assert_eq!(v["type"], "pos");
        assert_eq!(v["ts"], 1_763_780_000_100u64);
        assert_eq!(v["seq"], 41);
        assert_eq!(v["spd"], 7.89);
        assert_eq!(v["hdg"], 270.0);

        let Message::Binary(mp) = encode_pos(Codec::Msgpack, &fix(), 5, 1).unwrap() else {
            panic!("MessagePack must be a binary frame")
        };
        // A map (fixmap marker 0x8_), not a positional array.
        assert_eq!(mp[0] & 0xf0, 0x80);
        let v: serde_json::Value = rmp_serde::from_slice(&mp).unwrap();
        assert_eq!(v["type"], "pos");
        assert_eq!(v["lat"], 52.52);
        assert_eq!(v["ts"], 5);
    }

    #[test]
    fn decodes_batches_in_json() {
        let text = r#"{"type":"batch","group":"fleet-a","updates":[{"id":"bus-17","lat":52.52,"lon":13.405,"ts":1763780000100,"rts":1763780000103,"online":true,"spd":7.9,"hdg":270}],"offline":["bus-3"],"extra":{"x":[1,2]}}"#;
        let msg = Message::text(text);
        let f = decode(Codec::Json, &msg).unwrap().unwrap();
        assert_eq!(f.kind, "batch");
        assert_eq!(f.group.as_deref(), Some("fleet-a"));
        let u = f.updates.unwrap();
        assert_eq!(u[0].id, "bus-17");
        assert_eq!(u[0].ts, 1_763_780_000_100.0);
        assert_eq!(u[0].rts, Some(1_763_780_000_103.0));
        assert_eq!(f.offline.unwrap(), vec!["bus-3"]);
    }

    #[test]
    fn decodes_msgpack_maps_including_float_timestamps() {
        #[derive(Serialize)]
        struct Rec {
            id: &'static str,
            lat: f64,
            lon: f64,
            ts: f64,
            online: bool,
        }
        #[derive(Serialize)]
        struct Snap {
            #[serde(rename = "type")]
            kind: &'static str,
            group: &'static str,
            devices: Vec<Rec>,
        }
        let snap = Snap {
            kind: "snapshot",
            group: "g",
            devices: vec![Rec {
                id: "d1",
                lat: 1.0,
                lon: 2.0,
                ts: 1234.0,
                online: false,
            }],
        };
        let msg = Message::Binary(Bytes::from(rmp_serde::to_vec_named(&snap).unwrap()));
        let f = decode(Codec::Msgpack, &msg).unwrap().unwrap();
        assert_eq!(f.kind, "snapshot");
        assert_eq!(f.devices.unwrap()[0].ts, 1234.0);

        #[derive(Serialize)]
        struct Welcome {
            #[serde(rename = "type")]
            kind: &'static str,
            tick_ms: u64,
            server_time: u64,
        }
        let msg = Message::Binary(Bytes::from(
            rmp_serde::to_vec_named(&Welcome {
                kind: "welcome",
                tick_ms: 100,
                server_time: 1,
            })
            .unwrap(),
        ));
        let f = decode(Codec::Msgpack, &msg).unwrap().unwrap();
        assert_eq!(f.tick_ms, Some(100.0));
    }

    #[test]
    fn wrong_frame_kinds_and_garbage_are_told_apart() {
        let text = Message::text(r#"{"type":"welcome"}"#);
        assert_eq!(
            decode(Codec::Msgpack, &text).unwrap().unwrap_err(),
            DecodeError::WrongFrameKind
        );
        let garbage = Message::text("{not json");
        assert_eq!(
            decode(Codec::Json, &garbage).unwrap().unwrap_err(),
            DecodeError::Malformed
        );
        assert!(decode(Codec::Json, &Message::Ping(Bytes::new())).is_none());
    }
}
