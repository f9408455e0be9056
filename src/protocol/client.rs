//! Client messages: decoding a frame into a [`ClientMessage`] and validating it.
//!
//! Decoding reads every client message into one flat, borrowing struct ([`RawMessage`]) and then
//! checks it, so that the success path allocates nothing beyond the message itself and every
//! refusal names the field at fault.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use super::codec::Codec;
use super::error::{ErrorCode, Refusal};
use crate::model::Fix;

/// How far in the future a fix time may be, in ms (5 minutes, per the protocol).
pub const MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// The earliest fix time accepted, ms since the epoch: 2000-01-01T00:00:00Z. Earlier times are
/// a clock that was never set (phones send `0` or a 1970 date for "unknown"), never a real fix.
pub const MIN_FIX_TS_MS: i64 = 946_684_800_000;

/// The `id` of a `ping`, echoed unchanged in the `pong`: any number.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PingId {
    /// A non-negative integer.
    Unsigned(u64),
    /// A negative integer.
    Signed(i64),
    /// Any other number.
    Float(f64),
}

impl Serialize for PingId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match *self {
            PingId::Unsigned(v) => s.serialize_u64(v),
            PingId::Signed(v) => s.serialize_i64(v),
            PingId::Float(v) => s.serialize_f64(v),
        }
    }
}

impl<'de> Deserialize<'de> for PingId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NumberVisitor;
        impl Visitor<'_> for NumberVisitor {
            type Value = PingId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PingId, E> {
                Ok(PingId::Unsigned(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PingId, E> {
                Ok(if v >= 0 {
                    PingId::Unsigned(v as u64)
                } else {
                    PingId::Signed(v)
                })
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<PingId, E> {
                Ok(PingId::Float(v))
            }
        }
        d.deserialize_any(NumberVisitor)
    }
}

/// Every field any client message may carry, read in one pass without buffering.
///
/// Unknown fields are ignored, as the protocol allows new optional fields.
#[derive(Debug, Default, Deserialize)]
pub struct RawMessage<'a> {
    /// Message type.
    #[serde(rename = "type", borrow, default)]
    pub kind: Option<Cow<'a, str>>,
    /// `pos`: latitude.
    #[serde(default)]
    pub lat: Option<f64>,
    /// `pos`: longitude.
    #[serde(default)]
    pub lon: Option<f64>,
    /// `pos`: fix time in ms.
    #[serde(default)]
    pub ts: Option<f64>,
    /// `pos`: accuracy in m.
    #[serde(default)]
    pub acc: Option<f64>,
    /// `pos`: altitude in m.
    #[serde(default)]
    pub alt: Option<f64>,
    /// `pos`: speed in m/s.
    #[serde(default)]
    pub spd: Option<f64>,
    /// `pos`: heading in degrees.
    #[serde(default)]
    pub hdg: Option<f64>,
    /// `pos`: battery percent.
    #[serde(default)]
    pub batt: Option<f64>,
    /// `pos`: client counter.
    #[serde(default)]
    pub seq: Option<u64>,
    /// `sub` / `unsub`: group id.
    #[serde(borrow, default)]
    pub group: Option<Cow<'a, str>>,
    /// `ping`: any number.
    #[serde(default)]
    pub id: Option<PingId>,
}

/// A decoded, validated client message.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientMessage<'a> {
    /// A new fix.
    Pos {
        /// The validated fix.
        fix: Fix,
        /// The client's counter, echoed in errors.
        seq: Option<u64>,
    },
    /// Watch one more group.
    Sub {
        /// Group id (not yet checked against the identity).
        group: Cow<'a, str>,
    },
    /// Stop watching a group.
    Unsub {
        /// Group id.
        group: Cow<'a, str>,
    },
    /// Round-trip probe.
    Ping {
        /// Echoed in the `pong`.
        id: PingId,
    },
}

/// Decodes and validates one client frame in `codec`. `now_ms` is the receive time, used for
/// fixes without `ts` and for the future-time check.
pub fn decode(codec: Codec, bytes: &[u8], now_ms: i64) -> Result<ClientMessage<'_>, Refusal> {
    let raw = decode_raw(codec, bytes)?;
    let seq = raw.seq;
    let kind = raw
        .kind
        .as_deref()
        .ok_or_else(|| Refusal::new(ErrorCode::BadMessage, "type is required"))?;
    match kind {
        "pos" => match validate_fix(&raw, now_ms) {
            Ok(fix) => Ok(ClientMessage::Pos { fix, seq }),
            Err(mut refusal) => {
                refusal.seq = seq;
                Err(refusal)
            }
        },
        "sub" => Ok(ClientMessage::Sub {
            group: required_group(raw.group)?,
        }),
        "unsub" => Ok(ClientMessage::Unsub {
            group: required_group(raw.group)?,
        }),
        "ping" => Ok(ClientMessage::Ping {
            id: raw
                .id
                .ok_or_else(|| Refusal::new(ErrorCode::BadMessage, "id is required"))?,
        }),
        other => Err(Refusal::new(
            ErrorCode::BadMessage,
            format!("unknown message type {:?}", truncate(other, 32)),
        )),
    }
}

/// Reads the flat message struct, naming the offending field when a value has the wrong type.
pub fn decode_raw(codec: Codec, bytes: &[u8]) -> Result<RawMessage<'_>, Refusal> {
    // Messages are objects with named fields, never positional arrays (which serde would
    // otherwise accept for a struct).
    let is_map = match codec {
        Codec::Json => bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'),
        Codec::MsgPack => matches!(bytes.first(), Some(0x80..=0x8f | 0xde | 0xdf)),
    };
    if !is_map {
        let message = match codec {
            Codec::Json => "unparseable message: expected a JSON object",
            Codec::MsgPack => "unparseable message: expected a MessagePack map",
        };
        return Err(Refusal::new(ErrorCode::BadMessage, message));
    }
    let result = match codec {
        Codec::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            serde_path_to_error::deserialize(&mut de)
                .map_err(|e| describe(e.path(), e.inner()))
                .and_then(|raw| match de.end() {
                    Ok(()) => Ok(raw),
                    Err(e) => Err(format!("unparseable message: {e}")),
                })
        }
        Codec::MsgPack => {
            let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
            serde_path_to_error::deserialize(&mut de).map_err(|e| describe(e.path(), e.inner()))
        }
    };
    result.map_err(|message| Refusal::new(ErrorCode::BadMessage, message))
}

fn describe(path: &serde_path_to_error::Path, inner: &dyn fmt::Display) -> String {
    let path = path.to_string();
    if path.is_empty() || path == "." {
        format!("unparseable message: {inner}")
    } else {
        format!("{path}: {inner}")
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn required_group(group: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, Refusal> {
    group.ok_or_else(|| Refusal::new(ErrorCode::BadMessage, "group is required"))
}

/// Checks the fields of a `pos` against the protocol's rules and builds the fix.
pub fn validate_fix(raw: &RawMessage<'_>, now_ms: i64) -> Result<Fix, Refusal> {
    let invalid = |message: &'static str| Refusal::new(ErrorCode::InvalidPosition, message);
    let lat = raw.lat.ok_or_else(|| invalid("lat is required"))?;
    let lon = raw.lon.ok_or_else(|| invalid("lon is required"))?;
    check_range(
        lat,
        -90.0,
        90.0,
        "lat must be a finite number within [-90, 90]",
    )?;
    check_range(
        lon,
        -180.0,
        180.0,
        "lon must be a finite number within [-180, 180]",
    )?;
    let ts = match raw.ts {
        None => now_ms,
        Some(ts) => {
            if !ts.is_finite() || ts < 0.0 {
                return Err(invalid(
                    "ts must be a non-negative number of ms since the epoch",
                ));
            }
            let ts = ts as i64;
            if ts < MIN_FIX_TS_MS {
                return Err(invalid("ts must not be before 2000-01-01T00:00:00Z"));
            }
            if ts > now_ms + MAX_FUTURE_MS {
                return Err(invalid("ts must not be more than 5 minutes in the future"));
            }
            ts
        }
    };
    let optional = |v: Option<f64>, lo: f64, hi: f64, message: &'static str| match v {
        Some(v) => check_range(v, lo, hi, message).map(|()| Some(v)),
        None => Ok(None),
    };
    Ok(Fix {
        lat,
        lon,
        ts,
        acc: optional(raw.acc, 0.0, f64::MAX, "acc must be a finite number >= 0")?,
        alt: optional(raw.alt, f64::MIN, f64::MAX, "alt must be a finite number")?,
        spd: optional(raw.spd, 0.0, f64::MAX, "spd must be a finite number >= 0")?,
        hdg: optional(
            raw.hdg,
            0.0,
            360.0,
            "hdg must be a finite number within [0, 360]",
        )?,
        batt: optional(
            raw.batt,
            0.0,
            100.0,
            "batt must be a finite number within [0, 100]",
        )?,
    })
}

/// Refuses a fix whose time is before `oldest_ms`: it is too old for the history retention,
/// so storing it would lose it at the next prune (`invalid_position`, naming `ts`).
pub fn check_fix_age(fix: &Fix, oldest_ms: i64) -> Result<(), Refusal> {
    if fix.ts < oldest_ms {
        Err(Refusal::new(
            ErrorCode::InvalidPosition,
            "ts is older than the history retention",
        ))
    } else {
        Ok(())
    }
}

fn check_range(v: f64, lo: f64, hi: f64, message: &'static str) -> Result<(), Refusal> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(Refusal::new(ErrorCode::InvalidPosition, message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_763_780_000_000;

    fn json(s: &str) -> Result<ClientMessage<'_>, Refusal> {
        decode(Codec::Json, s.as_bytes(), NOW)
    }

    #[test]
    fn decodes_a_full_pos() {
        let msg = json(r#"{"type":"pos","lat":52.52,"lon":13.405,"ts":1763780000100,"spd":7.9,"hdg":270,"seq":41,"extra":[1,2]}"#).unwrap();
        let ClientMessage::Pos { fix, seq } = msg else {
            panic!("not a pos: {msg:?}")
        };
        assert_eq!(seq, Some(41));
        assert_eq!(fix.lat, 52.52);
        assert_eq!(fix.ts, 1_763_780_000_100);
        assert_eq!(fix.hdg, Some(270.0));
        assert_eq!(fix.batt, None);
    }

    #[test]
    fn missing_ts_means_now() {
        let ClientMessage::Pos { fix, .. } = json(r#"{"type":"pos","lat":1,"lon":2}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(fix.ts, NOW);
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (
                r#"{"type":"pos","lon":2}"#,
                ErrorCode::InvalidPosition,
                "lat is required",
            ),
            (
                r#"{"type":"pos","lat":91,"lon":2,"seq":7}"#,
                ErrorCode::InvalidPosition,
                "lat must",
            ),
            (
                r#"{"type":"pos","lat":1,"lon":-181}"#,
                ErrorCode::InvalidPosition,
                "lon must",
            ),
            (
                r#"{"type":"pos","lat":1,"lon":1,"hdg":361}"#,
                ErrorCode::InvalidPosition,
                "hdg",
            ),
            (
                r#"{"type":"pos","lat":1,"lon":1,"batt":-1}"#,
                ErrorCode::InvalidPosition,
                "batt",
            ),
            (
                r#"{"type":"pos","lat":1,"lon":1,"acc":-1}"#,
                ErrorCode::InvalidPosition,
                "acc",
            ),
            (
                r#"{"type":"pos","lat":1,"lon":1,"spd":-0.5}"#,
                ErrorCode::InvalidPosition,
                "spd",
            ),
            (
                r#"{"type":"pos","lat":1,"lon":1,"ts":1763780400001}"#,
                ErrorCode::InvalidPosition,
                "future",
            ),
            (
                r#"{"type":"pos","lat":"x","lon":1}"#,
                ErrorCode::BadMessage,
                "lat:",
            ),
            (
                r#"{"type":"pos","lat":1,"lon":1,"seq":-1}"#,
                ErrorCode::BadMessage,
                "seq:",
            ),
            (
                r#"{"type":"fly"}"#,
                ErrorCode::BadMessage,
                "unknown message type",
            ),
            (r#"{"lat":1}"#, ErrorCode::BadMessage, "type is required"),
            (
                r#"{"type":"sub"}"#,
                ErrorCode::BadMessage,
                "group is required",
            ),
            (
                r#"{"type":"ping"}"#,
                ErrorCode::BadMessage,
                "id is required",
            ),
            (r#"[1,2]"#, ErrorCode::BadMessage, "unparseable"),
            (
                r#"{"type":"ping","id":1} x"#,
                ErrorCode::BadMessage,
                "unparseable",
            ),
            ("", ErrorCode::BadMessage, "unparseable"),
        ];
        for (input, code, needle) in cases {
            let refusal = json(input).expect_err(input);
            assert_eq!(refusal.code, code, "{input}: {refusal}");
            assert!(refusal.message.contains(needle), "{input}: {refusal}");
        }
        assert_eq!(
            json(r#"{"type":"pos","lat":91,"lon":2,"seq":7}"#)
                .unwrap_err()
                .seq,
            Some(7)
        );
    }

    #[test]
    fn msgpack_rejects_nan() {
        #[derive(Serialize)]
        struct Pos {
            r#type: &'static str,
            lat: f64,
            lon: f64,
        }
        let bytes = rmp_serde::to_vec_named(&Pos {
            r#type: "pos",
            lat: f64::NAN,
            lon: 1.0,
        })
        .unwrap();
        let refusal = decode(Codec::MsgPack, &bytes, NOW).unwrap_err();
        assert_eq!(refusal.code, ErrorCode::InvalidPosition);
    }
}
