//! The store's writer thread: schema, batched writes, downsampling and pruning.
//!
//! The writer owns the only read-write connection. Each wake-up writes everything queued in one
//! transaction, so the cost of a commit (one WAL append and, with `synchronous = NORMAL`, no
//! fsync) is shared by every position of the batch.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, Row, params};
use tracing::{debug, error, warn};

use super::error::{BUSY_TIMEOUT_MS, StoreError};
use super::queue::{Entry, Shared};
use crate::config::StoreConfig;
use crate::model::{DeviceId, Fix, now_ms};

/// Version written to `PRAGMA user_version`; a file with a higher one is refused, a lower one
/// is migrated at open (version 1 had no `track.grps`).
pub(super) const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS last_known (
    device TEXT NOT NULL,
    grp    TEXT NOT NULL,
    ts     INTEGER NOT NULL,
    rts    INTEGER NOT NULL,
    lat    REAL NOT NULL,
    lon    REAL NOT NULL,
    acc    REAL,
    alt    REAL,
    spd    REAL,
    hdg    REAL,
    batt   REAL,
    PRIMARY KEY (device, grp)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS track (
    device TEXT NOT NULL,
    ts     INTEGER NOT NULL,
    rts    INTEGER NOT NULL,
    lat    REAL NOT NULL,
    lon    REAL NOT NULL,
    acc    REAL,
    alt    REAL,
    spd    REAL,
    hdg    REAL,
    batt   REAL,
    grps   TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (device, ts)
) WITHOUT ROWID;
";

/// Version 1 to 2: each history point carries the groups it was published to, `grps`, in the
/// form of [`groups_column`]. Version 1 did not record them; the best the old file knows is the
/// groups in which the device has a last-known row (every group it published to within the
/// retention window), so old points are given those.
const MIGRATE_1_TO_2: &str = "
ALTER TABLE track ADD COLUMN grps TEXT NOT NULL DEFAULT '';
UPDATE track SET grps = coalesce(
    (SELECT ',' || group_concat(grp, ',') || ',' FROM last_known
     WHERE last_known.device = track.device), '');
";

/// The `grps` column of a history point: each group between commas (`,family,work,`), so
/// `instr(grps, ',work,')` finds one. Group ids cannot hold a comma (protocol id rules).
pub(super) fn groups_column(groups: &[crate::model::GroupId]) -> String {
    let mut out =
        String::with_capacity(1 + groups.iter().map(|g| g.as_str().len() + 1).sum::<usize>());
    out.push(',');
    for g in groups {
        out.push_str(g.as_str());
        out.push(',');
    }
    out
}

const UPSERT_LAST_KNOWN: &str = "
INSERT INTO last_known (device, grp, ts, rts, lat, lon, acc, alt, spd, hdg, batt)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
ON CONFLICT (device, grp) DO UPDATE SET
    ts = excluded.ts, rts = excluded.rts, lat = excluded.lat, lon = excluded.lon,
    acc = excluded.acc, alt = excluded.alt, spd = excluded.spd, hdg = excluded.hdg,
    batt = excluded.batt
WHERE excluded.ts > last_known.ts
   OR (excluded.ts = last_known.ts AND excluded.rts >= last_known.rts)";

const INSERT_TRACK: &str = "
INSERT OR IGNORE INTO track (device, ts, rts, lat, lon, acc, alt, spd, hdg, batt, grps)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

/// The stored points next to a fix time: the newest at or before it, the oldest after it.
const BEFORE: &str =
    "SELECT ts, lat, lon FROM track WHERE device = ?1 AND ts <= ?2 ORDER BY ts DESC LIMIT 1";
const AFTER: &str =
    "SELECT ts, lat, lon FROM track WHERE device = ?1 AND ts > ?2 ORDER BY ts ASC LIMIT 1";

/// Page cache of the writer connection, in KiB (64 MiB). Each device's newest history page is
/// touched at every one of its points; with SQLite's default 2 MiB cache those pages are read
/// back from the file again and again once a few hundred devices report, which cost the writer
/// two thirds of its throughput in `benches/store.rs`.
const WRITER_CACHE_KIB: i64 = 64 * 1024;

/// Devices pruned per transaction. Between two chunks the writer writes what was queued
/// meanwhile, so a prune of many devices does not let the queue fill up.
const PRUNE_CHUNK: usize = 256;

/// `e` as the store's error: damage to the file (SQLite's "not a database" or "malformed")
/// becomes [`StoreError::Damaged`], which tells the operator what to do.
pub(super) fn damaged(path: &Path, e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match e.sqlite_error_code() {
        Some(NotADatabase | DatabaseCorrupt) => StoreError::Damaged {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        _ => StoreError::Sqlite(e),
    }
}

/// Reads a fix from a row whose columns from `at` on are `ts, rts, lat, lon, acc, alt, spd, hdg,
/// batt` (the column order of both tables after their keys).
pub(super) fn read_fix(row: &Row<'_>, at: usize) -> rusqlite::Result<Fix> {
    Ok(Fix {
        ts: row.get(at)?,
        lat: row.get(at + 2)?,
        lon: row.get(at + 3)?,
        acc: row.get(at + 4)?,
        alt: row.get(at + 5)?,
        spd: row.get(at + 6)?,
        hdg: row.get(at + 7)?,
        batt: row.get(at + 8)?,
    })
}

/// The last stored history point of a device, for the downsampling rule.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Kept {
    ts: i64,
    lat: f64,
    lon: f64,
}

/// Great-circle distance in metres between two points (haversine, mean Earth radius).
pub(crate) fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const EARTH_RADIUS_M: f64 = 6_371_008.8;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let half_dlat = (p2 - p1) / 2.0;
    let half_dlon = (lon2 - lon1).to_radians() / 2.0;
    let a = half_dlat.sin().powi(2) + p1.cos() * p2.cos() * half_dlon.sin().powi(2);
    2.0 * EARTH_RADIUS_M * a.sqrt().min(1.0).asin()
}

/// The downsampling rule, on fix time only: a fix becomes a history point unless a stored point
/// of the device has the same fix time, or lies (by fix time) less than `min_interval_ms`
/// before or after it, or (if `min_distance_m` > 0) lies next to it in time closer than that
/// many metres. `prev` is the stored point at or before the fix time, `next` the one after.
/// Fixes arriving in fix-time order only ever have a `prev`; a backlog arriving after newer
/// fixes is judged against the points on both sides of it, so arrival order does not matter.
pub(super) fn keep(
    prev: Option<Kept>,
    next: Option<Kept>,
    fix: &Fix,
    min_interval_ms: i64,
    min_distance_m: f64,
) -> bool {
    let apart = |p: Kept| {
        p.ts.abs_diff(fix.ts) > 0
            && p.ts.abs_diff(fix.ts) >= min_interval_ms.unsigned_abs()
            && (min_distance_m <= 0.0
                || distance_m(p.lat, p.lon, fix.lat, fix.lon) >= min_distance_m)
    };
    prev.is_none_or(apart) && next.is_none_or(apart)
}

/// The writer: its connection, settings, and the last stored point of each device it has seen.
pub(super) struct Writer {
    conn: Connection,
    config: StoreConfig,
    shared: Arc<Shared>,
    /// Newest history point per device (loaded from the file on first sight), so a fix newer
    /// than it, the usual case, needs no query. One entry per device that reported within the
    /// retention window, like the hub's own state.
    kept: HashMap<DeviceId, Kept>,
}

impl Writer {
    /// Opens the read-write connection and creates or checks the schema.
    pub(super) fn open(
        path: &Path,
        config: StoreConfig,
        shared: Arc<Shared>,
    ) -> Result<Writer, StoreError> {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let wal = std::path::PathBuf::from(wal);
        if let Some(damage) = super::wal::check(&wal)? {
            return Err(StoreError::DamagedWal {
                path: wal,
                first_bad_frame: damage.first_bad_frame,
                lost_commits: damage.lost_commits,
            });
        }
        let conn = Connection::open(path).map_err(|e| damaged(path, e))?;
        Self::prepare(&conn).map_err(|e| match e {
            StoreError::Sqlite(e) => damaged(path, e),
            other => other,
        })?;
        Ok(Writer {
            conn,
            config,
            shared,
            kept: HashMap::new(),
        })
    }

    /// Sets the connection up and creates, migrates or checks the schema.
    fn prepare(conn: &Connection) -> Result<(), StoreError> {
        conn.busy_timeout(Duration::from_millis(BUSY_TIMEOUT_MS))?;
        let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            warn!(journal_mode = %mode, "SQLite refused WAL mode; readers may wait for writes");
        }
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Negative: a size in KiB rather than pages.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        let tables: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'
             AND name IN ('last_known', 'track')",
            [],
            |r| r.get(0),
        )?;
        let others: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'
             AND name NOT IN ('last_known', 'track')",
            [],
            |r| r.get(0),
        )?;
        if others > 0 || (version > 0 && tables != 2) {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_NOTADB),
                Some("it holds tables Beacon does not know, or lacks Beacon's".into()),
            )
            .into());
        }
        match version {
            0 => {
                conn.execute_batch(SCHEMA)?;
                conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
            }
            1 => {
                let tx = conn.unchecked_transaction()?;
                tx.execute_batch(MIGRATE_1_TO_2)?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
                tx.commit()?;
                warn!(
                    from = 1,
                    to = SCHEMA_VERSION,
                    "store migrated: history points now carry their groups; older points were \
                     given the groups of the device's last-known positions"
                );
            }
            SCHEMA_VERSION => {}
            newer => return Err(StoreError::Schema(newer)),
        }
        Ok(())
    }

    /// The thread's loop: write each batch, prune on schedule, stop once closed and drained.
    pub(super) fn run(mut self) {
        let every = Duration::from_secs(self.config.history_prune_secs);
        let mut next_prune = Instant::now() + every;
        loop {
            let (batch, closing) = self.shared.take(next_prune);
            self.write_logged(&batch);
            if closing {
                return;
            }
            if Instant::now() >= next_prune {
                match self.prune(now_ms()) {
                    Ok(removed) => debug!(removed_points = removed, "history pruned"),
                    Err(e) => {
                        self.shared.metrics.store.errors.inc();
                        error!(error = %e, "history prune failed; retrying at the next one");
                    }
                }
                next_prune = Instant::now() + every;
            }
        }
    }

    /// Writes `batch`, counting and logging the outcome. A failed batch is lost (its positions
    /// are counted as dropped); the next fix of each device repairs its last-known row.
    fn write_logged(&mut self, batch: &[Entry]) {
        if batch.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = self.write(batch);
        let metrics = &self.shared.metrics.store;
        match result {
            Ok(points) => {
                metrics.written.inc_by(batch.len() as u64);
                metrics.track_points.inc_by(points);
                metrics
                    .batch_seconds
                    .observe(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                metrics.errors.inc();
                metrics.dropped.inc_by(batch.len() as u64);
                error!(error = %e, positions = batch.len(), "store write failed; batch lost");
                // The transaction rolled back: what was remembered of it is not in the file.
                self.kept.clear();
            }
        }
    }

    /// Writes `batch` in one transaction; returns how many history points were added.
    pub(super) fn write(&mut self, batch: &[Entry]) -> rusqlite::Result<u64> {
        let horizon = now_ms() - self.config.retention_ms();
        let min_interval_ms =
            i64::try_from(self.config.history_min_interval_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX);
        let min_distance_m = self.config.history_min_distance_m;
        let tx = self.conn.transaction()?;
        let mut points = 0;
        {
            let mut upsert = tx.prepare_cached(UPSERT_LAST_KNOWN)?;
            let mut insert = tx.prepare_cached(INSERT_TRACK)?;
            let mut before = tx.prepare_cached(BEFORE)?;
            let mut after = tx.prepare_cached(AFTER)?;
            let read = |r: &Row<'_>| {
                Ok(Kept {
                    ts: r.get(0)?,
                    lat: r.get(1)?,
                    lon: r.get(2)?,
                })
            };
            for Entry {
                device: id,
                groups,
                fix: f,
                rts,
            } in batch
            {
                let device = id.as_str();
                for group in groups {
                    upsert.execute(params![
                        device,
                        group.as_str(),
                        f.ts,
                        rts,
                        f.lat,
                        f.lon,
                        f.acc,
                        f.alt,
                        f.spd,
                        f.hdg,
                        f.batt
                    ])?;
                }
                if f.ts < horizon {
                    continue;
                }
                let newest = match self.kept.get(id) {
                    Some(kept) => Some(*kept),
                    None => before
                        .query_row(params![device, i64::MAX], read)
                        .optional()?,
                };
                // In fix-time order (the usual case) the newest point is the only neighbour;
                // an older fix is judged against the stored points on both sides of it.
                let (prev, next) = match newest {
                    Some(newest) if f.ts <= newest.ts => (
                        before.query_row(params![device, f.ts], read).optional()?,
                        after.query_row(params![device, f.ts], read).optional()?,
                    ),
                    newest => (newest, None),
                };
                let kept_now = keep(prev, next, f, min_interval_ms, min_distance_m)
                    && insert.execute(params![
                        device,
                        f.ts,
                        rts,
                        f.lat,
                        f.lon,
                        f.acc,
                        f.alt,
                        f.spd,
                        f.hdg,
                        f.batt,
                        groups_column(groups)
                    ])? > 0;
                points += u64::from(kept_now);
                let point = Kept {
                    ts: f.ts,
                    lat: f.lat,
                    lon: f.lon,
                };
                let is_newest = newest.is_none_or(|n| f.ts > n.ts);
                match newest {
                    _ if kept_now && is_newest => {
                        self.kept.insert(id.clone(), point);
                    }
                    Some(newest) => {
                        self.kept.insert(id.clone(), newest);
                    }
                    None => {}
                }
            }
        }
        tx.commit()?;
        Ok(points)
    }

    /// Deletes history older than the retention window and beyond the per-device bound, and
    /// last-known rows received before the window. Returns how many points were deleted.
    pub(super) fn prune(&mut self, now: i64) -> rusqlite::Result<u64> {
        let horizon = now - self.config.retention_ms();
        let max_points = i64::from(self.config.history_max_points);
        let mut removed = 0;
        // Devices are visited in key order by seeking past the previous one, so each step is
        // one index lookup however many points the table holds.
        let mut after = String::new();
        loop {
            let tx = self.conn.transaction()?;
            let mut done = false;
            {
                let mut next = tx.prepare_cached(
                    "SELECT device FROM track WHERE device > ?1 ORDER BY device LIMIT 1",
                )?;
                let mut too_old =
                    tx.prepare_cached("DELETE FROM track WHERE device = ?1 AND ts < ?2")?;
                let mut nth_newest = tx.prepare_cached(
                    "SELECT ts FROM track WHERE device = ?1 ORDER BY ts DESC LIMIT 1 OFFSET ?2",
                )?;
                let mut up_to =
                    tx.prepare_cached("DELETE FROM track WHERE device = ?1 AND ts <= ?2")?;
                for _ in 0..PRUNE_CHUNK {
                    let device: Option<String> =
                        next.query_row(params![after], |r| r.get(0)).optional()?;
                    let Some(device) = device else {
                        done = true;
                        break;
                    };
                    removed += too_old.execute(params![device, horizon])? as u64;
                    let cut: Option<i64> = nth_newest
                        .query_row(params![device, max_points], |r| r.get(0))
                        .optional()?;
                    if let Some(cut) = cut {
                        removed += up_to.execute(params![device, cut])? as u64;
                    }
                    after = device;
                }
                if done {
                    tx.execute("DELETE FROM last_known WHERE rts < ?1", params![horizon])?;
                }
            }
            tx.commit()?;
            if done {
                break;
            }
            let (batch, _) = self.shared.take(Instant::now());
            self.write_logged(&batch);
        }
        self.kept.retain(|_, kept| kept.ts >= horizon);
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(ts: i64, lat: f64, lon: f64) -> Fix {
        Fix::new(lat, lon, ts)
    }

    #[test]
    fn distances() {
        // One degree of latitude is about 111.2 km.
        let d = distance_m(0.0, 0.0, 1.0, 0.0);
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
        assert_eq!(distance_m(52.5, 13.4, 52.5, 13.4), 0.0);
        // Antipodes: half the circumference.
        let d = distance_m(0.0, 0.0, 0.0, 180.0);
        assert!((d - 20_015_115.0).abs() < 10.0, "{d}");
    }

    #[test]
    fn downsampling_rule() {
        let prev = Some(Kept {
            ts: 10_000,
            lat: 0.0,
            lon: 0.0,
        });
        assert!(
            keep(None, None, &fix(0, 0.0, 0.0), 5000, 100.0),
            "a first point is kept"
        );
        assert!(
            !keep(prev, None, &fix(14_999, 1.0, 0.0), 5000, 0.0),
            "too soon"
        );
        assert!(
            keep(prev, None, &fix(15_000, 0.0, 0.0), 5000, 0.0),
            "interval only"
        );
        assert!(
            !keep(prev, None, &fix(10_000, 1.0, 0.0), 0, 0.0),
            "same time is a repeat"
        );
        assert!(keep(prev, None, &fix(10_001, 0.0, 0.0), 0, 0.0));
        // 0.0005 degrees of latitude is about 56 m.
        assert!(
            !keep(prev, None, &fix(60_000, 0.0005, 0.0), 5000, 100.0),
            "too close"
        );
        assert!(
            keep(prev, None, &fix(60_000, 0.001, 0.0), 5000, 100.0),
            "far enough"
        );
        // An older fix arriving late is judged by fix time against both neighbours.
        assert!(
            keep(None, prev, &fix(5_000, 0.0, 0.0), 5000, 0.0),
            "far enough before the newest point"
        );
        assert!(
            !keep(None, prev, &fix(6_000, 0.0, 0.0), 5000, 0.0),
            "too close before the newest point"
        );
        let earlier = Some(Kept {
            ts: 0,
            lat: 0.0,
            lon: 0.0,
        });
        assert!(keep(earlier, prev, &fix(5_000, 0.0, 0.0), 5000, 0.0));
        assert!(!keep(earlier, prev, &fix(4_000, 0.0, 0.0), 5000, 0.0));
    }
}
