//! Fences, proximity rules and every device's state against them in `DIR/geofences.sqlite3`
//! (with `--data-dir`), so a graceful restart repeats and loses no event.
//!
//! Writes happen when something changes (a definition; a device's side, a pending change or a
//! dwell; when a device was first judged after a new fence; a pair becoming near or
//! separating), never for a fix that changes nothing. They go through [`Writer`]: a bounded
//! queue ([`QUEUE`]) to one thread that owns the connection and commits every batch queued
//! since its last wake-up in one transaction (WAL, `synchronous=NORMAL`), so no async worker
//! ever waits for the disk. A crash may lose the last queued writes, never reorder them.

use std::path::Path;
use std::sync::Mutex;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;

use rusqlite::{Connection, params};
use tracing::{debug, warn};

use crate::metrics::GeofenceMetrics;

use super::fence::Member;
use super::proximity::ProximityRule;

/// File name inside `--data-dir`.
pub(crate) const FILE: &str = "geofences.sqlite3";

/// The open store.
#[derive(Debug)]
pub(crate) struct Disk {
    conn: Connection,
}

/// Everything stored, as read back at start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// `(group, id, definition JSON, created stamp)`.
    pub(crate) fences: Vec<(String, String, String, i64)>,
    /// `(group, rule)`.
    pub(crate) proximity: Vec<(String, ProximityRule)>,
    /// `(group, fence, device, state)`.
    pub(crate) members: Vec<(String, String, String, Member)>,
    /// `(group, a, b)`.
    pub(crate) pairs: Vec<(String, String, String)>,
    /// `(group, device, stamp)`: when each device was last judged after a new fence.
    pub(crate) seen: Vec<(String, String, i64)>,
}

/// One change to write.
#[derive(Debug)]
pub(crate) enum Write<S> {
    /// A fence defined or replaced.
    Fence {
        group: S,
        id: S,
        json: String,
        created: i64,
    },
    /// A fence and its members deleted.
    DeleteFence { group: S, id: S },
    /// A device's state against a fence.
    Member {
        group: S,
        fence: S,
        device: S,
        member: Member,
    },
    /// A device no longer judged by a fence.
    DeleteMember { group: S, fence: S, device: S },
    /// A proximity rule set (`Some`) or removed with its pairs (`None`).
    Proximity {
        group: S,
        rule: Option<ProximityRule>,
    },
    /// A device judged at `stamp`, after the group's newest fence was made.
    Seen { group: S, device: S, stamp: i64 },
    /// Every device's stamp in a group dropped (its last fence deleted).
    DeleteSeen { group: S },
    /// A pair became near (`true`) or separated.
    Pair { group: S, a: S, b: S, near: bool },
}

impl<S: AsRef<str>> Write<S> {
    /// The same change, owning its strings (to cross to the writer thread).
    pub(crate) fn to_owned_write(&self) -> Write<String> {
        let o = |s: &S| s.as_ref().to_owned();
        match self {
            Write::Fence {
                group,
                id,
                json,
                created,
            } => Write::Fence {
                group: o(group),
                id: o(id),
                json: json.clone(),
                created: *created,
            },
            Write::DeleteFence { group, id } => Write::DeleteFence {
                group: o(group),
                id: o(id),
            },
            Write::Member {
                group,
                fence,
                device,
                member,
            } => Write::Member {
                group: o(group),
                fence: o(fence),
                device: o(device),
                member: *member,
            },
            Write::DeleteMember {
                group,
                fence,
                device,
            } => Write::DeleteMember {
                group: o(group),
                fence: o(fence),
                device: o(device),
            },
            Write::Proximity { group, rule } => Write::Proximity {
                group: o(group),
                rule: *rule,
            },
            Write::Seen {
                group,
                device,
                stamp,
            } => Write::Seen {
                group: o(group),
                device: o(device),
                stamp: *stamp,
            },
            Write::DeleteSeen { group } => Write::DeleteSeen { group: o(group) },
            Write::Pair { group, a, b, near } => Write::Pair {
                group: o(group),
                a: o(a),
                b: o(b),
                near: *near,
            },
        }
    }
}

impl Disk {
    /// Opens (and creates) the store in `dir`.
    pub(crate) fn open(dir: &Path) -> rusqlite::Result<Disk> {
        std::fs::create_dir_all(dir)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        let conn = Connection::open(dir.join(FILE))?;
        let _: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS fences (
                 grp TEXT NOT NULL, id TEXT NOT NULL, record TEXT NOT NULL,
                 PRIMARY KEY (grp, id));
             CREATE TABLE IF NOT EXISTS proximity (
                 grp TEXT PRIMARY KEY, enter_m REAL NOT NULL, exit_m REAL NOT NULL);
             CREATE TABLE IF NOT EXISTS members (
                 grp TEXT NOT NULL, fence TEXT NOT NULL, device TEXT NOT NULL,
                 record TEXT NOT NULL, PRIMARY KEY (grp, fence, device));
             CREATE TABLE IF NOT EXISTS pairs (
                 grp TEXT NOT NULL, a TEXT NOT NULL, b TEXT NOT NULL,
                 PRIMARY KEY (grp, a, b));
             CREATE TABLE IF NOT EXISTS seen (
                 grp TEXT NOT NULL, device TEXT NOT NULL, stamp INTEGER NOT NULL,
                 PRIMARY KEY (grp, device));",
        )?;
        // Files from before fences carried their creation stamp: add the column (0, "made
        // before any device was seen"). A second run finds it there and fails harmlessly.
        let has_created = conn.prepare("SELECT created FROM fences LIMIT 0").is_ok();
        if !has_created {
            conn.execute_batch("ALTER TABLE fences ADD COLUMN created INTEGER NOT NULL DEFAULT 0")?;
        }
        Ok(Disk { conn })
    }

    /// Reads everything back.
    pub(crate) fn load(&self) -> rusqlite::Result<Loaded> {
        let mut loaded = Loaded::default();
        let mut s = self
            .conn
            .prepare("SELECT grp, id, record, created FROM fences")?;
        loaded.fences = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        let mut s = self
            .conn
            .prepare("SELECT grp, enter_m, exit_m FROM proximity")?;
        loaded.proximity = s
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    ProximityRule {
                        enter_m: r.get(1)?,
                        exit_m: r.get(2)?,
                    },
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut s = self
            .conn
            .prepare("SELECT grp, fence, device, record FROM members")?;
        let rows: Vec<(String, String, String, String)> = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        loaded.members = rows
            .into_iter()
            .filter_map(|(g, f, d, json)| Some((g, f, d, serde_json::from_str(&json).ok()?)))
            .collect();
        let mut s = self.conn.prepare("SELECT grp, a, b FROM pairs")?;
        loaded.pairs = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        let mut s = self.conn.prepare("SELECT grp, device, stamp FROM seen")?;
        loaded.seen = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        Ok(loaded)
    }

    /// Applies `writes` in one transaction.
    pub(crate) fn write(&mut self, writes: &[Write<String>]) -> rusqlite::Result<()> {
        if writes.is_empty() {
            return Ok(());
        }
        let tx = self.conn.transaction()?;
        for w in writes {
            match w {
                Write::Fence {
                    group,
                    id,
                    json,
                    created,
                } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO fences (grp, id, record, created)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![group, id, json, created])?;
                }
                Write::DeleteFence { group, id } => {
                    tx.prepare_cached("DELETE FROM fences WHERE grp = ?1 AND id = ?2")?
                        .execute(params![group, id])?;
                    tx.prepare_cached("DELETE FROM members WHERE grp = ?1 AND fence = ?2")?
                        .execute(params![group, id])?;
                }
                Write::Member {
                    group,
                    fence,
                    device,
                    member,
                } => {
                    // Serializing numbers and booleans cannot fail.
                    let json = serde_json::to_string(member).unwrap_or_default();
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO members (grp, fence, device, record)
                         VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![group, fence, device, json])?;
                }
                Write::DeleteMember {
                    group,
                    fence,
                    device,
                } => {
                    tx.prepare_cached(
                        "DELETE FROM members WHERE grp = ?1 AND fence = ?2 AND device = ?3",
                    )?
                    .execute(params![group, fence, device])?;
                }
                Write::Proximity { group, rule } => match rule {
                    Some(rule) => {
                        tx.prepare_cached(
                            "INSERT OR REPLACE INTO proximity (grp, enter_m, exit_m)
                             VALUES (?1, ?2, ?3)",
                        )?
                        .execute(params![
                            group,
                            rule.enter_m,
                            rule.exit_m
                        ])?;
                    }
                    None => {
                        tx.prepare_cached("DELETE FROM proximity WHERE grp = ?1")?
                            .execute(params![group])?;
                        tx.prepare_cached("DELETE FROM pairs WHERE grp = ?1")?
                            .execute(params![group])?;
                    }
                },
                Write::Seen {
                    group,
                    device,
                    stamp,
                } => {
                    tx.prepare_cached(
                        "INSERT OR REPLACE INTO seen (grp, device, stamp) VALUES (?1, ?2, ?3)",
                    )?
                    .execute(params![group, device, stamp])?;
                }
                Write::DeleteSeen { group } => {
                    tx.prepare_cached("DELETE FROM seen WHERE grp = ?1")?
                        .execute(params![group])?;
                }
                Write::Pair { group, a, b, near } => {
                    let (a, b) = if a <= b { (a, b) } else { (b, a) };
                    let sql = if *near {
                        "INSERT OR IGNORE INTO pairs (grp, a, b) VALUES (?1, ?2, ?3)"
                    } else {
                        "DELETE FROM pairs WHERE grp = ?1 AND a = ?2 AND b = ?3"
                    };
                    tx.prepare_cached(sql)?.execute(params![group, a, b])?;
                }
            }
        }
        tx.commit()
    }
}

/// Batches of writes waiting for the writer thread before new ones are dropped (counted in
/// `beacon_geofence_disk_dropped_total`). A batch is what one fix, route or shared change
/// wrote: usually one row.
pub(crate) const QUEUE: usize = 16_384;

/// Most batches committed in one transaction.
pub(crate) const MAX_BATCHES_PER_COMMIT: usize = 1024;

/// Writes, applied in the order sent.
type Job = Vec<Write<String>>;

/// The store's writer: one thread owns the SQLite connection and commits, in one transaction
/// per wake-up, every batch queued since, in the order queued. Judging a fix never touches the
/// disk: it queues (without waiting) and goes on.
#[derive(Debug)]
pub(crate) struct Writer {
    tx: Mutex<Option<SyncSender<Job>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Writer {
    /// Starts the thread over `disk`.
    pub(crate) fn start(disk: Disk, metrics: GeofenceMetrics) -> std::io::Result<Writer> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("geofence-writer".into())
            .spawn(move || run(disk, rx, metrics))?;
        Ok(Writer {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `writes`; `false` when the queue is full (or the writer stopped) and they were
    /// dropped.
    pub(crate) fn send(&self, writes: Vec<Write<String>>) -> bool {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match tx.as_ref().map(|tx| tx.try_send(writes)) {
            Some(Ok(())) => true,
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => false,
        }
    }

    /// Commits what is queued and stops the thread (blocking). Later writes are dropped.
    pub(crate) fn close(&self) {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(tx);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            warn!("geofence writer thread panicked");
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.close();
    }
}

/// The writer thread: takes a batch, then whatever else is queued (up to
/// [`MAX_BATCHES_PER_COMMIT`]), commits it in one transaction; until every sender is gone.
fn run(mut disk: Disk, rx: Receiver<Job>, metrics: GeofenceMetrics) {
    let mut writes: Vec<Write<String>> = Vec::new();
    while let Ok(first) = rx.recv() {
        writes.extend(first);
        for _ in 1..MAX_BATCHES_PER_COMMIT {
            match rx.try_recv() {
                Ok(job) => writes.extend(job),
                Err(_) => break,
            }
        }
        commit(&mut disk, &mut writes, &metrics);
    }
    commit(&mut disk, &mut writes, &metrics);
    debug!("geofence writer stopped");
}

fn commit(disk: &mut Disk, writes: &mut Vec<Write<String>>, metrics: &GeofenceMetrics) {
    if writes.is_empty() {
        return;
    }
    if let Err(e) = disk.write(writes) {
        metrics.disk_errors.inc();
        warn!(error = %e, rows = writes.len(), "geofence state not written");
    }
    writes.clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Metrics;

    fn member(inside: bool, ts: i64) -> Member {
        Member {
            inside,
            since_ts: ts,
            dwelled: false,
            candidate: None,
            ts,
        }
    }

    #[test]
    fn the_writer_keeps_the_order_and_commits_all_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new().geofence.clone();
        let writer = Writer::start(Disk::open(dir.path()).unwrap(), metrics.clone()).unwrap();
        for i in 0..2000 {
            // The same row over and over, then one per device: the last write of each wins.
            assert!(writer.send(vec![Write::Member {
                group: "g".to_owned(),
                fence: "gf_1".to_owned(),
                device: "van".to_owned(),
                member: member(i % 2 == 1, i),
            }]));
            writer.send(vec![
                Write::Seen {
                    group: "g",
                    device: "van",
                    stamp: i,
                }
                .to_owned_write(),
            ]);
        }
        writer.send(vec![Write::DeleteSeen { group: "g" }.to_owned_write()]);
        writer.close();
        assert!(
            !writer.send(vec![Write::DeleteSeen { group: "g" }.to_owned_write()]),
            "closed"
        );
        let loaded = Disk::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(loaded.members.len(), 1);
        assert_eq!(loaded.members[0].3, member(true, 1999));
        assert!(loaded.seen.is_empty(), "deleted after it was written");
        assert_eq!(metrics.disk_errors.get(), 0);
    }
}
