//! The relay's own wire format: MessagePack maps with named fields, between instances and in
//! the Redis hash.
//!
//! It is deliberately separate from the client protocol ([`crate::protocol`]): the two change
//! for different reasons. Fields may be added (decoders ignore unknown ones); an incompatible
//! change bumps [`FORMAT_VERSION`], and a message of another version is refused and counted.
//!
//! A message (`<prefix>:{<group>}:ch`) is
//! `{"v": 1, "src": <instance id>, "up": [record…], "off": [device id…], "hb": [device id…]}`:
//! `up` holds the latest position of devices whose fix or presence changed on the sending
//! instance since its previous message, `off` the devices whose socket closed there, `hb` the
//! devices that still hold a socket there (the presence heartbeat). Empty lists are left out.
//! A record (`up` items and the values of `<prefix>:{<group>}:pos`) is
//! `{"id", "lat", "lon", "ts", "rts", "online"}` plus whichever of `acc`, `alt`, `spd`, `hdg`,
//! `batt` the device sent: the names of the client protocol's position record.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::model::{DeviceId, Fix, Position};

/// Version of the message format written and accepted.
pub(crate) const FORMAT_VERSION: u8 = 1;

/// Most records in one published message. A group with more local changes in one tick is
/// published as several messages. A record takes 60-190 bytes (a 64-character id and every
/// optional field), so a message stays under 100 KiB.
pub(crate) const MAX_RECORDS_PER_MESSAGE: usize = 512;

/// Most device ids in the `off` or `hb` list of one message (at most 66 bytes each: under
/// 140 KiB per list).
pub(crate) const MAX_IDS_PER_MESSAGE: usize = 2048;

/// Largest message or stored record accepted from Redis, in bytes. Our own messages stay far
/// below it (see the two limits above); anything larger is refused unread.
pub(crate) const MAX_MESSAGE_BYTES: usize = 512 * 1024;

/// Why bytes from Redis were refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CodecError {
    /// Larger than the largest message accepted (512 KiB).
    #[error("{0} bytes is more than the {MAX_MESSAGE_BYTES} byte limit")]
    TooLarge(usize),
    /// Not a MessagePack map of the expected shape.
    #[error("undecodable: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// Written by an incompatible version.
    #[error("format version {0} is not {FORMAT_VERSION}")]
    Version(u8),
    /// A field out of its range.
    #[error("invalid record: {0}")]
    Invalid(&'static str),
}

/// One device's position.
#[derive(Debug, Serialize, Deserialize)]
struct Record<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    lat: f64,
    lon: f64,
    ts: i64,
    rts: i64,
    online: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    acc: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    alt: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    spd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    hdg: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    batt: Option<f64>,
}

impl<'a> From<&'a Position> for Record<'a> {
    fn from(p: &'a Position) -> Self {
        Record {
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
        }
    }
}

impl Record<'_> {
    /// Checks the record as strictly as a client's fix: another instance validated it, but
    /// whatever sits in Redis is only as trustworthy as everyone who can write there.
    fn into_position(self) -> Result<Position, CodecError> {
        let device = DeviceId::parse(&self.id).map_err(|_| CodecError::Invalid("device id"))?;
        let within = |v: f64, lo: f64, hi: f64| v.is_finite() && (lo..=hi).contains(&v);
        if !within(self.lat, -90.0, 90.0) || !within(self.lon, -180.0, 180.0) {
            return Err(CodecError::Invalid("lat/lon out of range"));
        }
        let optional = [self.acc, self.alt, self.spd, self.hdg, self.batt];
        if optional.iter().flatten().any(|v| !v.is_finite()) {
            return Err(CodecError::Invalid("non-finite number"));
        }
        Ok(Position {
            device,
            fix: Fix {
                lat: self.lat,
                lon: self.lon,
                ts: self.ts,
                acc: self.acc,
                alt: self.alt,
                spd: self.spd,
                hdg: self.hdg,
                batt: self.batt,
            },
            rts: self.rts,
            online: self.online,
        })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Envelope<'a> {
    v: u8,
    #[serde(borrow)]
    src: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", borrow)]
    up: Vec<Record<'a>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", borrow)]
    off: Vec<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", borrow)]
    hb: Vec<Cow<'a, str>>,
}

/// A decoded message from another instance.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Message {
    /// Instance id of the sender.
    pub(crate) src: String,
    /// Latest positions of devices that changed there.
    pub(crate) updates: Vec<Position>,
    /// Devices whose socket closed there.
    pub(crate) offline: Vec<DeviceId>,
    /// Devices that hold a socket there.
    pub(crate) heartbeat: Vec<DeviceId>,
}

/// Encodes one message.
pub(crate) fn encode_message(
    src: &str,
    updates: &[&Position],
    offline: &[DeviceId],
    heartbeat: &[DeviceId],
) -> Vec<u8> {
    fn ids(list: &[DeviceId]) -> Vec<Cow<'_, str>> {
        list.iter().map(|d| Cow::Borrowed(d.as_str())).collect()
    }
    let envelope = Envelope {
        v: FORMAT_VERSION,
        src: Cow::Borrowed(src),
        up: updates.iter().map(|p| Record::from(*p)).collect(),
        off: ids(offline),
        hb: ids(heartbeat),
    };
    // Serializing plain strings, numbers and booleans into a Vec cannot fail.
    rmp_serde::to_vec_named(&envelope).expect("encoding a relay message")
}

/// Encodes one group's news as few messages as the per-message bounds allow: one, unless a list
/// is longer than [`MAX_RECORDS_PER_MESSAGE`] or [`MAX_IDS_PER_MESSAGE`]. None when all are empty.
pub(crate) fn encode_messages(
    src: &str,
    updates: &[&Position],
    offline: &[DeviceId],
    heartbeat: &[DeviceId],
) -> Vec<Vec<u8>> {
    let mut up = updates.chunks(MAX_RECORDS_PER_MESSAGE);
    let mut off = offline.chunks(MAX_IDS_PER_MESSAGE);
    let mut hb = heartbeat.chunks(MAX_IDS_PER_MESSAGE);
    let mut out = Vec::with_capacity(1);
    loop {
        let (u, o, h) = (up.next(), off.next(), hb.next());
        if u.is_none() && o.is_none() && h.is_none() {
            return out;
        }
        out.push(encode_message(
            src,
            u.unwrap_or_default(),
            o.unwrap_or_default(),
            h.unwrap_or_default(),
        ));
    }
}

/// Decodes one message, refusing anything oversized, of another version, or out of range.
pub(crate) fn decode_message(bytes: &[u8]) -> Result<Message, CodecError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let envelope: Envelope<'_> = rmp_serde::from_slice(bytes)?;
    if envelope.v != FORMAT_VERSION {
        return Err(CodecError::Version(envelope.v));
    }
    let ids = |list: Vec<Cow<'_, str>>| {
        list.iter()
            .map(|d| DeviceId::parse(d).map_err(|_| CodecError::Invalid("device id")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Message {
        src: envelope.src.into_owned(),
        updates: envelope
            .up
            .into_iter()
            .map(Record::into_position)
            .collect::<Result<_, _>>()?,
        offline: ids(envelope.off)?,
        heartbeat: ids(envelope.hb)?,
    })
}

/// Encodes one stored record (a value of the positions hash).
pub(crate) fn encode_record(position: &Position) -> Vec<u8> {
    // Serializing plain strings, numbers and booleans into a Vec cannot fail.
    rmp_serde::to_vec_named(&Record::from(position)).expect("encoding a relay record")
}

/// Decodes one stored record.
pub(crate) fn decode_record(bytes: &[u8]) -> Result<Position, CodecError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(CodecError::TooLarge(bytes.len()));
    }
    let record: Record<'_> = rmp_serde::from_slice(bytes)?;
    record.into_position()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn position(id: &str, online: bool) -> Position {
        Position {
            device: DeviceId::parse(id).unwrap(),
            fix: Fix {
                lat: 52.52,
                lon: -13.405,
                ts: 1_763_780_000_100,
                acc: Some(4.5),
                alt: None,
                spd: Some(0.1 + 0.2),
                hdg: None,
                batt: Some(81.0),
            },
            rts: 1_763_780_000_103,
            online,
        }
    }

    #[test]
    fn messages_round_trip() {
        let a = position("bus-17", true);
        let b = position("bus-12", false);
        let off = vec![DeviceId::parse("bus-3").unwrap()];
        let hb = vec![DeviceId::parse("bus-4").unwrap()];
        let bytes = encode_message("9f2c", &[&a, &b], &off, &hb);
        let message = decode_message(&bytes).unwrap();
        assert_eq!(
            message,
            Message {
                src: "9f2c".into(),
                updates: vec![a, b],
                offline: off,
                heartbeat: hb,
            }
        );
    }

    #[test]
    fn records_round_trip_with_named_fields() {
        let p = position("x", true);
        let bytes = encode_record(&p);
        assert_eq!(decode_record(&bytes).unwrap(), p);
        let value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(value["id"], "x");
        assert_eq!(value["online"], true);
        assert!(value.get("alt").is_none(), "absent fields are left out");
    }

    #[test]
    fn empty_lists_are_left_out_and_default_back() {
        let bytes = encode_message("i", &[], &[], &[]);
        let value: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(value, serde_json::json!({"v": 1, "src": "i"}));
        assert_eq!(decode_message(&bytes).unwrap().src, "i");
    }

    #[test]
    fn big_news_is_split_within_the_bounds() {
        let positions: Vec<Position> = (0..1300)
            .map(|i| position(&format!("device-{i:0>57}"), true))
            .collect();
        let refs: Vec<&Position> = positions.iter().collect();
        let ids: Vec<DeviceId> = positions.iter().map(|p| p.device.clone()).collect();
        let messages = encode_messages("i", &refs, &ids[..10], &ids);
        assert_eq!(messages.len(), 3, "1300 records at 512 per message");
        let decoded: Vec<Message> = messages
            .iter()
            .map(|m| {
                assert!(m.len() <= MAX_MESSAGE_BYTES);
                decode_message(m).unwrap()
            })
            .collect();
        assert!(
            decoded
                .iter()
                .all(|m| m.updates.len() <= MAX_RECORDS_PER_MESSAGE)
        );
        let total: usize = decoded.iter().map(|m| m.updates.len()).sum();
        assert_eq!(total, 1300);
        assert_eq!(decoded[0].offline.len(), 10);
        assert_eq!(decoded[0].heartbeat.len(), 1300);
        assert!(encode_messages("i", &[], &[], &[]).is_empty());
        // The largest possible message still decodes.
        let largest = encode_messages("i", &refs[..512], &ids[..1300], &ids[..1300]);
        assert_eq!(largest.len(), 1);
    }

    #[test]
    fn refuses_bad_input() {
        let other_version = rmp_serde::to_vec_named(&serde_json::json!({"v": 2, "src": "i"}));
        assert!(matches!(
            decode_message(&other_version.unwrap()),
            Err(CodecError::Version(2))
        ));
        assert!(matches!(
            decode_message(b"\xc1"),
            Err(CodecError::Decode(_))
        ));
        assert!(matches!(
            decode_message(&vec![0; MAX_MESSAGE_BYTES + 1]),
            Err(CodecError::TooLarge(_))
        ));
        let bad_id = serde_json::json!({"v": 1, "src": "i", "off": ["a b"]});
        assert!(matches!(
            decode_message(&rmp_serde::to_vec_named(&bad_id).unwrap()),
            Err(CodecError::Invalid(_))
        ));
        let mut far = position("x", true);
        far.fix.lat = 91.0;
        assert!(matches!(
            decode_record(&encode_record(&far)),
            Err(CodecError::Invalid(_))
        ));
        let mut nan = position("x", true);
        nan.fix.spd = Some(f64::NAN);
        assert!(decode_record(&encode_record(&nan)).is_err());
    }
}
