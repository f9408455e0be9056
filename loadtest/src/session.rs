//! What a client does with every frame it receives: decode it, update the subscriber's view,
//! count it, and record the latency of every new fix ([`Session`]).

use std::cmp::Ordering;
use std::sync::atomic::Ordering::Relaxed;

use tokio_tungstenite::tungstenite::Message;

use crate::clock::now_micros;
use crate::latest::{EXCLUDED, View};
use crate::metrics::{Sample, add, bump};
use crate::shared::WorkerShared;
use crate::spec::{ClientSpec, parse_device};
use crate::wire::{DecodeError, Record, decode};

/// What a received frame meant to the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing for the connection loop to do.
    Continue,
    /// All initial snapshots have arrived: a device may start sending.
    Ready,
    /// The server sent a close frame with this code.
    Closed(String),
}

/// Per-connection receive state: decodes every frame, updates the subscriber's view, counts,
/// and records the latency of every new fix.
///
/// Public so that benches can feed it recorded frames; the connection loops are its only
/// users in a run.
pub struct Session<'a> {
    w: &'a WorkerShared,
    spec: &'a ClientSpec,
    /// What this subscriber holds; tells new fixes from repeated or older ones.
    view: &'a View,
    initial_snapshots_left: u32,
    // Scratch buffers reused frame after frame.
    samples: Vec<Sample>,
    records: Vec<(u32, u32)>,
    /// Per record: `ts` and `rts` in microseconds.
    times_us: Vec<(u64, Option<u64>)>,
    compared: Vec<Ordering>,
}

impl<'a> Session<'a> {
    /// Fresh state for one connection of `spec`, keeping `view`.
    pub fn new(w: &'a WorkerShared, spec: &'a ClientSpec, view: &'a View) -> Session<'a> {
        Session {
            w,
            spec,
            view,
            initial_snapshots_left: 1,
            samples: Vec::new(),
            records: Vec::new(),
            times_us: Vec::new(),
            compared: Vec::new(),
        }
    }

    /// Handles one received message.
    pub fn on_message(&mut self, msg: &Message) -> Step {
        let c = &self.w.counters;
        let received_us = now_micros();
        if let Message::Close(frame) = msg {
            let code = frame.as_ref().map(|f| u16::from(f.code)).unwrap_or(1005);
            return Step::Closed(code.to_string());
        }
        let frame = match decode(self.spec.codec, msg) {
            None => return Step::Continue,
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                bump(&c.frames_received);
                bump(match e {
                    DecodeError::WrongFrameKind => &c.wrong_frame_kind,
                    DecodeError::Malformed => &c.malformed_frames,
                });
                return Step::Continue;
            }
        };
        bump(&c.frames_received);
        add(&c.bytes_received, msg.len() as u64);
        match frame.kind.as_ref() {
            "welcome" => {
                if let Some(tick) = frame.tick_ms.filter(|t| t.is_finite() && *t >= 0.0) {
                    self.w.tick_ms.fetch_max(tick as u64, Relaxed);
                }
                Step::Continue
            }
            "snapshot" => {
                self.apply(frame.devices.as_deref().unwrap_or_default(), None);
                if self.initial_snapshots_left > 0 {
                    self.initial_snapshots_left -= 1;
                    bump(&c.snapshots);
                    if self.initial_snapshots_left == 0 {
                        return Step::Ready;
                    }
                } else {
                    bump(&c.resyncs);
                }
                Step::Continue
            }
            "batch" => {
                self.apply(
                    frame.updates.as_deref().unwrap_or_default(),
                    Some(received_us),
                );
                add(
                    &c.offline_notices,
                    frame.offline.map_or(0, |o| o.len() as u64),
                );
                Step::Continue
            }
            "error" => {
                c.error_frame(frame.code.as_deref().unwrap_or("unknown"));
                Step::Continue
            }
            // pong, and message types newer than this harness.
            _ => Step::Continue,
        }
    }

    /// Updates the view and, for batches, counts each new fix and records its latency.
    /// Only this run's devices of the subscriber's group are looked at.
    fn apply(&mut self, records: &[Record<'_>], received_us: Option<u64>) {
        let w = self.w;
        self.records.clear();
        self.times_us.clear();
        for r in records {
            let Some(d) = parse_device(&w.device_prefix, &r.id, w.plan.devices) else {
                continue;
            };
            if !(r.ts.is_finite() && r.ts > 0.0) || w.layout.group_of(d) != self.spec.group {
                continue;
            }
            let offset = (r.ts as u64)
                .saturating_sub(w.plan.base_ms)
                .clamp(1, u64::from(EXCLUDED - 1));
            self.records.push((w.layout.slot_of(d), offset as u32));
            let rts_us = r
                .rts
                .filter(|t| t.is_finite() && *t > 0.0)
                .map(|t| (t * 1000.0) as u64);
            self.times_us.push(((r.ts * 1000.0) as u64, rts_us));
        }
        self.view.apply(&self.records, &mut self.compared);
        let c = &w.counters;
        self.samples.clear();
        for (i, order) in self.compared.iter().enumerate() {
            match (order, received_us) {
                (Ordering::Greater, Some(rx)) => {
                    bump(&c.updates_received);
                    let (ts, rts) = self.times_us[i];
                    self.samples.push(Sample {
                        end_to_end_us: rx.saturating_sub(ts),
                        split_us: rts.map(|rts| (rts.saturating_sub(ts), rx.saturating_sub(rts))),
                    });
                }
                (Ordering::Equal, Some(_)) => bump(&c.repeated),
                (Ordering::Less, _) => bump(&c.out_of_order),
                // Snapshot records: state, not deliveries.
                (_, None) => {}
            }
        }
        if !self.samples.is_empty() {
            w.record_latencies(&self.samples);
        }
    }
}
