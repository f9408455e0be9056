//! Counters and latency histograms, and how worker figures merge.
//!
//! Each worker keeps one [`Counters`] (atomics, shared by all its connection tasks) and one
//! latency [`Histogram`]. Once a second, and at the end, it sends a [`Stats`] snapshot plus
//! its histogram (HdrHistogram V2 encoding, base64) to the parent, which merges them: counts
//! add up, histograms add up exactly, so merged percentiles are the true percentiles over all
//! workers, not an average of per-worker ones.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

/// Largest latency the histograms track: 10 minutes, in microseconds. Larger values are
/// clamped to it.
pub(crate) const MAX_LATENCY_US: u64 = 600_000_000;

/// A latency histogram in microseconds with 3 significant digits.
pub(crate) fn new_histogram() -> Histogram<u64> {
    // Cannot fail: the bounds are constants that satisfy 1 <= low, 2 * low <= high, sigfig <= 5.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Serializes a histogram for a JSON line (V2 encoding, base64).
pub(crate) fn encode_histogram(h: &Histogram<u64>) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    V2Serializer::new()
        .serialize(h, &mut buf)
        .map_err(|e| anyhow::anyhow!("serializing histogram: {e:?}"))?;
    Ok(BASE64.encode(buf))
}

/// Reads back a histogram written by [`encode_histogram`].
pub(crate) fn decode_histogram(text: &str) -> anyhow::Result<Histogram<u64>> {
    let bytes = BASE64.decode(text).context("histogram is not base64")?;
    let h: Histogram<u64> = Deserializer::new()
        .deserialize(&mut bytes.as_slice())
        .map_err(|e| anyhow::anyhow!("deserializing histogram: {e:?}"))?;
    Ok(h)
}

/// Adds `other` into `into` (both from [`new_histogram`]).
pub(crate) fn merge_histogram(
    into: &mut Histogram<u64>,
    other: &Histogram<u64>,
) -> anyhow::Result<()> {
    into.add(other)
        .map_err(|e| anyhow::anyhow!("merging histograms: {e:?}"))
}

/// One delivery's latencies in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sample {
    /// Device send (`ts`) to subscriber receive.
    pub end_to_end_us: u64,
    /// Device send to server receive (`rts − ts`) and server receive to subscriber receive,
    /// when the record carried `rts`.
    pub split_us: Option<(u64, u64)>,
}

/// The latency histograms of a worker, in microseconds.
#[derive(Debug, Clone)]
pub(crate) struct Latencies {
    /// Device send to subscriber receive.
    pub end_to_end: Histogram<u64>,
    /// Device send to server receive (`rts − ts`): reading and ingest on the server.
    pub ingest: Histogram<u64>,
    /// Server receive to subscriber receive: batching tick, fan-out, writing, reading.
    pub fanout: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            end_to_end: new_histogram(),
            ingest: new_histogram(),
            fanout: new_histogram(),
        }
    }
}

impl Latencies {
    /// Records one delivery (values above [`MAX_LATENCY_US`] are clamped).
    pub(crate) fn record(&mut self, s: &Sample) {
        self.end_to_end
            .saturating_record(s.end_to_end_us.min(MAX_LATENCY_US));
        if let Some((ingest, fanout)) = s.split_us {
            self.ingest.saturating_record(ingest.min(MAX_LATENCY_US));
            self.fanout.saturating_record(fanout.min(MAX_LATENCY_US));
        }
    }

    /// Adds another worker's histograms.
    pub(crate) fn merge(&mut self, o: &Latencies) -> anyhow::Result<()> {
        merge_histogram(&mut self.end_to_end, &o.end_to_end)?;
        merge_histogram(&mut self.ingest, &o.ingest)?;
        merge_histogram(&mut self.fanout, &o.fanout)
    }

    /// Serializes all three for a JSON line.
    pub(crate) fn encode(&self) -> anyhow::Result<EncodedLatencies> {
        Ok(EncodedLatencies {
            end_to_end: encode_histogram(&self.end_to_end)?,
            ingest: encode_histogram(&self.ingest)?,
            fanout: encode_histogram(&self.fanout)?,
        })
    }
}

/// [`Latencies`] as carried between processes (see [`encode_histogram`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct EncodedLatencies {
    /// Device send to subscriber receive.
    pub end_to_end: String,
    /// Device send to server receive.
    pub ingest: String,
    /// Server receive to subscriber receive.
    pub fanout: String,
}

impl EncodedLatencies {
    /// Reads the histograms back.
    pub(crate) fn decode(&self) -> anyhow::Result<Latencies> {
        Ok(Latencies {
            end_to_end: decode_histogram(&self.end_to_end)?,
            ingest: decode_histogram(&self.ingest)?,
            fanout: decode_histogram(&self.fanout)?,
        })
    }
}

/// Latency summary in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Number of updates measured.
    pub count: u64,
    /// Smallest latency.
    pub min_ms: f64,
    /// Mean latency.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest latency.
    pub max_ms: f64,
}

impl LatencySummary {
    /// Summarises a histogram in microseconds; `None` when it is empty.
    pub(crate) fn of(h: &Histogram<u64>) -> Option<LatencySummary> {
        if h.is_empty() {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            count: h.len(),
            min_ms: ms(h.min()),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        })
    }
}

/// Live counters of one worker; every connection task updates them.
#[derive(Debug, Default)]
pub struct Counters {
    /// Connection attempts.
    pub attempted: AtomicU64,
    /// Connections whose WebSocket handshake completed.
    pub established: AtomicU64,
    /// Connection attempts that failed (see the reasons map).
    pub failed: AtomicU64,
    /// Connections open right now (a gauge).
    pub open: AtomicU64,
    /// Connections the server closed, or that dropped, before the harness closed them.
    pub disconnects: AtomicU64,
    /// `pos` messages written.
    pub fixes_sent: AtomicU64,
    /// New fixes of this run's devices received in batches (each one's latency is recorded).
    pub updates_received: AtomicU64,
    /// Data frames received.
    pub frames_received: AtomicU64,
    /// Payload bytes of data frames received.
    pub bytes_received: AtomicU64,
    /// Initial snapshots (one per subscribed group after connect).
    pub snapshots: AtomicU64,
    /// Snapshots after the initial ones: the server resynced a slow client.
    pub resyncs: AtomicU64,
    /// `error` frames (see the codes map).
    pub errors: AtomicU64,
    /// Updates older than what the subscriber already held for that device.
    pub out_of_order: AtomicU64,
    /// Updates repeating the fix the subscriber already held (e.g. a device coming back
    /// online is announced with its last position); not counted as deliveries.
    pub repeated: AtomicU64,
    /// Device ids listed in batches' `offline`.
    pub offline_notices: AtomicU64,
    /// Frames that did not decode as protocol messages.
    pub malformed_frames: AtomicU64,
    /// Data frames of the wrong kind for the negotiated codec.
    pub wrong_frame_kind: AtomicU64,
    /// Storm: complete connect-send-disconnect cycles.
    pub storm_cycles: AtomicU64,
    /// Reasons, error codes and close codes.
    pub maps: Mutex<Maps>,
    /// Stalled viewers (slow consumers), counted apart from everything above.
    pub stalled: Mutex<StalledStats>,
}

/// What became of the stalled viewers (`--stalled`). They are counted here only: not in the
/// connection counts, traffic, latency or latest-state figures of the measured clients.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StalledStats {
    /// Connection attempts.
    pub attempted: u64,
    /// Connections whose WebSocket handshake completed.
    pub connected: u64,
    /// Attempts that failed, by reason (as for the measured clients).
    pub failed_by_reason: BTreeMap<String, u64>,
    /// Connections that got their greeting and then stopped reading.
    pub stopped_reading: u64,
    /// Connections found closed when read again at the end (or closed before they stopped
    /// reading): the close code of the server's close frame, `eof` when the stream ended
    /// without one (a server that gives up on a blocked socket cannot get its close frame
    /// through), `reset` for a TCP reset.
    pub closed_by_server: BTreeMap<String, u64>,
    /// Connections still open when read again at the end.
    pub still_open: u64,
    /// Payload bytes read from the stalled sockets at the end, before the close or the drain
    /// limit: what the kernel buffers (and the server, if it kept writing) held for them.
    pub bytes_drained: u64,
}

impl StalledStats {
    /// Adds another worker's figures.
    pub(crate) fn merge(&mut self, o: &StalledStats) {
        self.attempted += o.attempted;
        self.connected += o.connected;
        self.stopped_reading += o.stopped_reading;
        self.still_open += o.still_open;
        self.bytes_drained += o.bytes_drained;
        for (mine, theirs) in [
            (&mut self.failed_by_reason, &o.failed_by_reason),
            (&mut self.closed_by_server, &o.closed_by_server),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
    }

    /// Failed connection attempts.
    pub fn failed(&self) -> u64 {
        self.failed_by_reason.values().sum()
    }
}

/// The keyed counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Maps {
    /// Failed connection attempts by reason (`refused`, `timeout`, `http_503`, `open_file_limit`, …).
    pub failed_by_reason: BTreeMap<String, u64>,
    /// `error` frames by `code`.
    pub errors_by_code: BTreeMap<String, u64>,
    /// How connections ended before the harness closed them: a close code (`1013`) or
    /// `reset`/`eof` when no close frame came.
    pub close_codes: BTreeMap<String, u64>,
}

/// Adds one to a counter.
pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// Counts a failed connection attempt.
    pub(crate) fn connect_failed(&self, reason: &str) {
        bump(&self.failed);
        self.count_key(|m| &mut m.failed_by_reason, reason);
    }

    /// Counts an `error` frame.
    pub(crate) fn error_frame(&self, code: &str) {
        bump(&self.errors);
        self.count_key(|m| &mut m.errors_by_code, code);
    }

    /// Counts a connection the server ended (close code or `reset`/`eof`).
    pub(crate) fn closed_by_server(&self, how: &str) {
        bump(&self.disconnects);
        self.count_key(|m| &mut m.close_codes, how);
    }

    fn count_key(&self, map: impl FnOnce(&mut Maps) -> &mut BTreeMap<String, u64>, key: &str) {
        // A poisoned lock only means another task panicked mid-update; the counts stay usable.
        let mut maps = self.maps.lock().unwrap_or_else(|p| p.into_inner());
        let map = map(&mut maps);
        match map.get_mut(key) {
            Some(n) => *n += 1,
            None => {
                map.insert(key.to_string(), 1);
            }
        }
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> Stats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            attempted: g(&self.attempted),
            established: g(&self.established),
            failed: g(&self.failed),
            open: g(&self.open),
            disconnects: g(&self.disconnects),
            fixes_sent: g(&self.fixes_sent),
            updates_received: g(&self.updates_received),
            frames_received: g(&self.frames_received),
            bytes_received: g(&self.bytes_received),
            snapshots: g(&self.snapshots),
            resyncs: g(&self.resyncs),
            errors: g(&self.errors),
            out_of_order: g(&self.out_of_order),
            repeated: g(&self.repeated),
            offline_notices: g(&self.offline_notices),
            malformed_frames: g(&self.malformed_frames),
            wrong_frame_kind: g(&self.wrong_frame_kind),
            storm_cycles: g(&self.storm_cycles),
            maps: self.maps.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            stalled: self.stalled().clone(),
        }
    }

    /// The stalled viewers' figures, for update.
    pub(crate) fn stalled(&self) -> std::sync::MutexGuard<'_, StalledStats> {
        self.stalled.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A snapshot of [`Counters`]; plain numbers that serialize and merge.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)] // Same fields as `Counters`, documented there.
pub struct Stats {
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    pub open: u64,
    pub disconnects: u64,
    pub fixes_sent: u64,
    pub updates_received: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub snapshots: u64,
    pub resyncs: u64,
    pub errors: u64,
    pub out_of_order: u64,
    pub repeated: u64,
    pub offline_notices: u64,
    pub malformed_frames: u64,
    pub wrong_frame_kind: u64,
    pub storm_cycles: u64,
    pub maps: Maps,
    pub stalled: StalledStats,
}

impl Stats {
    /// Adds another worker's figures.
    pub(crate) fn merge(&mut self, o: &Stats) {
        self.attempted += o.attempted;
        self.established += o.established;
        self.failed += o.failed;
        self.open += o.open;
        self.disconnects += o.disconnects;
        self.fixes_sent += o.fixes_sent;
        self.updates_received += o.updates_received;
        self.frames_received += o.frames_received;
        self.bytes_received += o.bytes_received;
        self.snapshots += o.snapshots;
        self.resyncs += o.resyncs;
        self.errors += o.errors;
        self.out_of_order += o.out_of_order;
        self.repeated += o.repeated;
        self.offline_notices += o.offline_notices;
        self.malformed_frames += o.malformed_frames;
        self.wrong_frame_kind += o.wrong_frame_kind;
        self.storm_cycles += o.storm_cycles;
        self.stalled.merge(&o.stalled);
        for (mine, theirs) in [
            (&mut self.maps.failed_by_reason, &o.maps.failed_by_reason),
            (&mut self.maps.errors_by_code, &o.maps.errors_by_code),
            (&mut self.maps.close_codes, &o.maps.close_codes),
        ] {
            for (k, v) in theirs {
                *mine.entry(k.clone()).or_default() += v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_serialization_and_merge_exactly() {
        let mut a = new_histogram();
        let mut b = new_histogram();
        for v in 1..=1000u64 {
            a.record(v * 1000).unwrap();
        }
        for v in 1001..=2000u64 {
            b.record(v * 1000).unwrap();
        }
        let a2 = decode_histogram(&encode_histogram(&a).unwrap()).unwrap();
        let b2 = decode_histogram(&encode_histogram(&b).unwrap()).unwrap();
        assert_eq!(a2, a);
        let mut merged = new_histogram();
        merge_histogram(&mut merged, &a2).unwrap();
        merge_histogram(&mut merged, &b2).unwrap();
        let s = LatencySummary::of(&merged).unwrap();
        assert_eq!(s.count, 2000);
        // 1..2000 ms uniformly: the median is ~1000 ms and p99 ~1980 ms (3 significant digits).
        assert!((s.p50_ms - 1000.0).abs() <= 1.0, "{s:?}");
        assert!((s.p99_ms - 1980.0).abs() <= 2.0, "{s:?}");
        assert!((s.max_ms - 2000.0).abs() <= 2.0, "{s:?}");
        assert!((s.min_ms - 1.0).abs() < 0.01, "{s:?}");
    }

    #[test]
    fn latency_sets_split_and_merge() {
        let mut a = Latencies::default();
        a.record(&Sample {
            end_to_end_us: 50_000,
            split_us: Some((2_000, 48_000)),
        });
        a.record(&Sample {
            end_to_end_us: 70_000,
            split_us: None,
        });
        let mut b = a.encode().unwrap().decode().unwrap();
        b.merge(&a).unwrap();
        assert_eq!(b.end_to_end.len(), 4);
        assert_eq!(b.ingest.len(), 2);
        assert_eq!(b.fanout.len(), 2);
        assert!(b.fanout.equivalent(b.fanout.max(), 48_000));
    }

    #[test]
    fn empty_histograms_have_no_summary() {
        assert!(LatencySummary::of(&new_histogram()).is_none());
        assert!(decode_histogram("!!").is_err());
    }

    #[test]
    fn stats_merge_adds_counts_and_maps() {
        let c = Counters::default();
        c.connect_failed("refused");
        c.connect_failed("refused");
        c.error_frame("rate_limited");
        c.closed_by_server("1013");
        bump(&c.fixes_sent);
        let mut total = c.snapshot();
        let other = Counters::default();
        other.connect_failed("timeout");
        other.connect_failed("refused");
        add(&other.fixes_sent, 4);
        total.merge(&other.snapshot());
        assert_eq!(total.failed, 4);
        assert_eq!(total.fixes_sent, 5);
        assert_eq!(total.maps.failed_by_reason["refused"], 3);
        assert_eq!(total.maps.failed_by_reason["timeout"], 1);
        assert_eq!(total.maps.errors_by_code["rate_limited"], 1);
        assert_eq!(total.maps.close_codes["1013"], 1);
        assert_eq!(total.disconnects, 1);
    }

    #[test]
    fn stalled_figures_stay_apart_and_merge() {
        let a = Counters::default();
        {
            let mut s = a.stalled();
            s.attempted = 3;
            s.connected = 2;
            *s.failed_by_reason.entry("refused".into()).or_default() += 1;
            s.stopped_reading = 2;
            *s.closed_by_server.entry("1013".into()).or_default() += 1;
            s.still_open = 1;
            s.bytes_drained = 100;
        }
        let b = Counters::default();
        {
            let mut s = b.stalled();
            s.attempted = 1;
            s.connected = 1;
            s.stopped_reading = 1;
            *s.closed_by_server.entry("1013".into()).or_default() += 1;
            s.bytes_drained = 50;
        }
        let mut total = a.snapshot();
        total.merge(&b.snapshot());
        let s = &total.stalled;
        assert_eq!((s.attempted, s.connected, s.failed()), (4, 3, 1));
        assert_eq!(
            (s.stopped_reading, s.still_open, s.bytes_drained),
            (3, 1, 150)
        );
        assert_eq!(s.closed_by_server["1013"], 2);
        // None of it shows in the measured clients' figures.
        assert_eq!(
            (total.attempted, total.established, total.failed),
            (0, 0, 0)
        );
        assert_eq!(total.disconnects, 0);
        assert!(total.maps.close_codes.is_empty());
    }
}
