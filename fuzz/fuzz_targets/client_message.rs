//! Fuzzes the client-message decoder in both codecs: it must return, never panic, and every
//! accepted `pos` must satisfy the protocol's ranges.
#![no_main]

use beacon::protocol::{self, ClientMessage, Codec};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_763_780_000_000;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let codec = if selector & 1 == 0 { Codec::Json } else { Codec::MsgPack };
    if let Ok(ClientMessage::Pos { fix, .. }) = protocol::decode(codec, bytes, NOW) {
        assert!((-90.0..=90.0).contains(&fix.lat));
        assert!((-180.0..=180.0).contains(&fix.lon));
        assert!(fix.ts <= NOW + protocol::MAX_FUTURE_MS);
        assert!(fix.ts >= protocol::MIN_FIX_TS_MS);
        assert!(fix.hdg.is_none_or(|h| (0.0..=360.0).contains(&h)));
        assert!(fix.batt.is_none_or(|b| (0.0..=100.0).contains(&b)));
    }
});
