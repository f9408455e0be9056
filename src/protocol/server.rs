//! Server messages: what the server sends, and encoding it once per codec.

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::client::PingId;
use super::codec::{Codec, Frame};
use super::error::{ErrorCode, Refusal};
use crate::model::{Event, Position};

/// One event on the wire (`event` frames, `GET /v1/groups/{group}/events`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord<'a> {
    /// Unique and the same everywhere the event is seen.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// `alarm`, `region.enter`, `region.exit`.
    #[serde(borrow)]
    pub kind: Cow<'a, str>,
    /// The device.
    #[serde(borrow)]
    pub device: Cow<'a, str>,
    /// The group.
    #[serde(borrow)]
    pub group: Cow<'a, str>,
    /// The fix time that caused it, ms.
    pub ts: i64,
    /// Latitude, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lat: Option<f64>,
    /// Longitude, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lon: Option<f64>,
    /// The alarm's name.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub alarm: Option<Cow<'a, str>>,
    /// The region's name.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub region: Option<Cow<'a, str>>,
    /// The geofence's id.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub geofence: Option<Cow<'a, str>>,
    /// The geofence's name.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub geofence_name: Option<Cow<'a, str>>,
    /// The other device of a proximity event.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Cow<'a, str>>,
    /// Distance between the two devices, metres.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_m: Option<f64>,
    /// Why, when not a device's move (`deleted`).
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub reason: Option<Cow<'a, str>>,
}

impl<'a> From<&'a Event> for EventRecord<'a> {
    fn from(e: &'a Event) -> Self {
        EventRecord {
            id: Cow::Borrowed(&e.id),
            kind: Cow::Borrowed(e.kind),
            device: Cow::Borrowed(e.device.as_str()),
            group: Cow::Borrowed(e.group.as_str()),
            ts: e.ts,
            lat: e.lat,
            lon: e.lon,
            alarm: e.alarm.as_deref().map(Cow::Borrowed),
            region: e.region.as_deref().map(Cow::Borrowed),
            geofence: e.geofence.as_deref().map(Cow::Borrowed),
            geofence_name: e.geofence_name.as_deref().map(Cow::Borrowed),
            peer: e.peer.as_deref().map(Cow::Borrowed),
            distance_m: e.distance_m,
            reason: e.reason.as_deref().map(Cow::Borrowed),
        }
    }
}

/// One device's position as it appears in `snapshot` and `batch` frames.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PositionRecord<'a> {
    /// Device id.
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Fix time, ms.
    pub ts: i64,
    /// Server receive time, ms.
    pub rts: i64,
    /// Whether the device is online.
    pub online: bool,
    /// Accuracy, m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acc: Option<f64>,
    /// Altitude, m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alt: Option<f64>,
    /// Speed, m/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spd: Option<f64>,
    /// Heading, degrees.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hdg: Option<f64>,
    /// Battery, percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batt: Option<f64>,
    /// The device's profile name: in every snapshot, and in a batch when it changed.
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    pub name: Option<Cow<'a, str>>,
}

impl<'a> From<&'a Position> for PositionRecord<'a> {
    fn from(p: &'a Position) -> Self {
        PositionRecord {
            id: Cow::Borrowed(p.device.as_str()),
            lat: p.fix.lat,
            lon: p.fix.lon,
            ts: p.fix.ts,
            rts: p.rts,
            online: p.online,
            acc: p.fix.acc,
            alt: p.fix.alt,
            spd: p.fix.spd,
            hdg: p.fix.hdg,
            batt: p.fix.batt,
            name: None,
        }
    }
}

/// A message from the server, borrowing what it carries.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerMessage<'a> {
    /// First frame of every connection.
    Welcome {
        /// Server-chosen connection id.
        session: &'a str,
        /// Device or viewer id.
        id: &'a str,
        /// `device` or `viewer`.
        role: &'a str,
        /// Groups of the identity.
        groups: Vec<&'a str>,
        /// Server clock, ms.
        server_time: i64,
        /// Batch interval, ms.
        tick_ms: u64,
    },
    /// Full state of one group.
    Snapshot {
        /// Group id.
        group: &'a str,
        /// Every device with a known position.
        devices: &'a [PositionRecord<'a>],
    },
    /// Changes in one group since the previous batch.
    Batch {
        /// Group id.
        group: &'a str,
        /// Latest fix of every device that changed.
        updates: &'a [PositionRecord<'a>],
        /// Devices that stopped being online.
        offline: &'a [&'a str],
    },
    /// Answer to `ping`.
    Pong {
        /// The ping's id.
        id: PingId,
        /// Server clock, ms.
        server_time: i64,
    },
    /// Events of one group.
    Event {
        /// Group id.
        group: &'a str,
        /// The events, oldest first.
        events: &'a [EventRecord<'a>],
    },
    /// A refused message.
    Error {
        /// Protocol error code.
        code: ErrorCode,
        /// Why.
        message: &'a str,
        /// The refused `pos`'s seq.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
}

impl ServerMessage<'_> {
    /// Encodes the message in `codec`.
    pub fn encode(&self, codec: Codec) -> Frame {
        match codec {
            Codec::Json => {
                // Serializing these types to JSON cannot fail: every map key is a string and
                // every value a plain number, string, bool or list.
                let text = serde_json::to_string(self).expect("server messages serialize to JSON");
                Frame::Text(Utf8Bytes::from(text))
            }
            Codec::MsgPack => {
                // Likewise infallible for MessagePack with named fields.
                let bytes = rmp_serde::to_vec_named(self).expect("server messages serialize");
                Frame::Binary(Bytes::from(bytes))
            }
        }
    }
}

/// Encodes a refusal as an `error` frame.
pub fn encode_refusal(refusal: &Refusal, codec: Codec) -> Frame {
    ServerMessage::Error {
        code: refusal.code,
        message: &refusal.message,
        seq: refusal.seq,
    }
    .encode(codec)
}

/// Encodes a `snapshot` of `group` from `positions`, each record with the name `name_of`
/// gives its device.
pub fn encode_snapshot(
    group: &str,
    positions: &[Position],
    name_of: &dyn Fn(&str) -> Option<String>,
    codec: Codec,
) -> Frame {
    let records: Vec<PositionRecord<'_>> = positions
        .iter()
        .map(|p| PositionRecord {
            name: name_of(p.device.as_str()).map(Cow::Owned),
            ..PositionRecord::from(p)
        })
        .collect();
    ServerMessage::Snapshot {
        group,
        devices: &records,
    }
    .encode(codec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{DeviceId, Fix};
    use crate::protocol::client::{ClientMessage, decode};

    #[test]
    fn a_snapshot_carries_every_position_in_both_codecs() {
        let position = Position {
            device: DeviceId::parse("bus-1").unwrap(),
            fix: Fix::new(52.5, 13.25, 7),
            rts: 9,
            online: true,
        };
        let expected = r#"{"type":"snapshot","group":"g","devices":[{"id":"bus-1","lat":52.5,"lon":13.25,"ts":7,"rts":9,"online":true}]}"#;
        let Frame::Text(text) =
            encode_snapshot("g", std::slice::from_ref(&position), &|_| None, Codec::Json)
        else {
            panic!("JSON goes in text frames")
        };
        assert_eq!(text.as_str(), expected);
        let Frame::Binary(bytes) = encode_snapshot("g", &[position], &|_| None, Codec::MsgPack)
        else {
            panic!("MessagePack goes in binary frames")
        };
        let value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(
            value,
            serde_json::from_str::<serde_json::Value>(expected).unwrap()
        );
    }

    #[test]
    fn ping_id_round_trips_its_kind() {
        for (input, expected) in [("7", "7"), ("-3", "-3"), ("1.5", "1.5")] {
            let msg = format!(r#"{{"type":"ping","id":{input}}}"#);
            let ClientMessage::Ping { id } = decode(Codec::Json, msg.as_bytes(), 0).unwrap() else {
                panic!()
            };
            let pong = ServerMessage::Pong { id, server_time: 1 }.encode(Codec::Json);
            let Frame::Text(text) = pong else { panic!() };
            assert_eq!(
                text.as_str(),
                format!(r#"{{"type":"pong","id":{expected},"server_time":1}}"#)
            );
        }
    }
}
