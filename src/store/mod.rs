//! Durable store: last-known positions and a bounded track history per device, in SQLite.
//!
//! # Design
//! - One embedded SQLite file, `<data-dir>/beacon.sqlite3`, in WAL mode (readers never wait for
//!   the writer) with `synchronous = NORMAL` (a committed batch survives a crash of the process;
//!   a power cut may lose the last batches, never corrupt the file).
//! - **Write-behind.** The store watches the hub as a [`HubObserver`]: every fix accepted here
//!   is handed to it as it is published ([`HubObserver::published`], before the tick coalesces
//!   anything, older fixes included), appended to a bounded in-memory queue, and the call
//!   returns. Nothing on the ingest path touches the disk. When the queue is full (the disk
//!   cannot keep up), positions are dropped and counted in `beacon_store_dropped_total`; the
//!   ticker never blocks. Position is state, so the next fix of a device repairs its last-known
//!   row; only history points are lost.
//! - **One writer thread** drains the queue: everything queued at a wake-up is written in one
//!   transaction (an upsert of the last-known row per device and group, and a track point when
//!   the downsampling rule keeps it). Retention and the per-device bound are enforced by the same
//!   thread every `--history-prune-secs`, and once at open.
//! - **Memory**: the queue (`--store-queue-positions`, about 150 bytes a position) and the
//!   writer's 64 MiB page cache; read connections keep SQLite's default 2 MiB each.
//! - **Reads** (track queries) run on the blocking pool through a few read-only connections
//!   ([`READERS`]), so a slow query never holds the async runtime or the writer.
//! - **Refusing a damaged file.** A file that is not a Beacon database or is damaged, and a
//!   write-ahead log that fails its checksums before committed transactions (`wal.rs`: SQLite
//!   would drop them silently), stop the start with [`StoreError::Damaged`] or
//!   [`StoreError::DamagedWal`], which name the file and what to do.
//! - **Start.** Last-known positions received within the hub's retention window are loaded into
//!   the hub with [`Hub::merge_remote`], offline (nobody is connected yet), so snapshots are
//!   complete at once and nothing is echoed back to the store.
//! - **Stop.** [`Store::close`] writes what is still queued and stops the writer; the server calls
//!   it after a last hub flush, so a graceful shutdown loses nothing that was accepted.
//!
//! # Tables
//! - `last_known (device, grp) -> fix, rts`: one row per device and group, kept until the
//!   history retention passes; it also tells which groups a device belongs to.
//! - `track (device, ts) -> fix, rts, grps`: a `WITHOUT ROWID` table whose primary key is the
//!   `(device, ts)` index, so a device's range query is one B-tree range scan and a repeated fix
//!   is stored once. `grps` lists the groups the fix was published to (`,a,b,`); reads go
//!   through [`HistoryScope`], the one rule of who reads which points (schema version 2;
//!   a version 1 file is migrated at open).
//!
//! # What reaches the history
//! Every accepted fix, judged only by the downsampling rule on fix time and distance
//! (`writer::keep`): bursts, lists in one request and offline backlogs keep every point that
//! rule keeps, and a fix older than the device's newest goes in at its place by fix time.

mod error;
mod queue;
mod scope;
mod wal;
mod writer;

pub use self::error::StoreError;
pub use self::scope::HistoryScope;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::Semaphore;
use tracing::{error, info};

use self::error::BUSY_TIMEOUT_MS;
use self::queue::Shared;
use crate::config::{Config, StoreConfig};
use crate::hub::{Hub, HubObserver};
use crate::metrics::Metrics;
use crate::model::{DeviceId, Fix, GroupId, Position, now_ms};

/// Name of the database file inside `--data-dir`.
pub const FILE_NAME: &str = "beacon.sqlite3";

/// Read-only connections for queries: at most this many queries run at once; more wait.
pub const READERS: usize = 4;

/// The hub's view of the store.
#[derive(Debug)]
struct StoreObserver(Arc<Shared>);

impl HubObserver for StoreObserver {
    // Presence is not stored (after a restart every device starts offline), so the tick's
    // `flushed` is of no interest: the store hears every accepted fix as it is published,
    // before the tick coalesces them.
    fn published(&self, device: &DeviceId, groups: &[GroupId], fix: &Fix, rts: i64) {
        self.0.push(queue::Entry {
            device: device.clone(),
            groups: groups.to_vec(),
            fix: fix.clone(),
            rts,
        });
    }
}

/// A pool of read-only connections, one per concurrent query.
#[derive(Debug)]
struct Readers {
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `query` on an idle connection, on the blocking pool.
    async fn run<T: Send + 'static>(
        self: &Arc<Self>,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Closed)?;
        let readers = self.clone();
        tokio::task::spawn_blocking(move || {
            // One permit per connection: holding a permit means one connection is idle.
            let conn = readers.idle().pop().ok_or(StoreError::Closed)?;
            let result = query(&conn);
            readers.idle().push(conn);
            drop(permit);
            result.map_err(StoreError::from)
        })
        .await
        .map_err(|_| StoreError::Closed)?
    }
}

/// A range of one device's history to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrackQuery {
    /// Earliest fix time, ms, inclusive.
    pub from: i64,
    /// Latest fix time, ms, inclusive.
    pub to: i64,
    /// Most points returned: the newest of the range.
    pub limit: usize,
}

/// One stored history point.
#[derive(Clone, Debug, PartialEq)]
pub struct TrackPoint {
    /// The fix as reported.
    pub fix: Fix,
    /// When the server received it, ms.
    pub rts: i64,
}

/// The answer to a [`TrackQuery`].
#[derive(Clone, Debug, PartialEq)]
pub struct Track {
    /// The newest `limit` points of the range, oldest first.
    pub points: Vec<TrackPoint>,
    /// Whether the range holds older points than those returned.
    pub truncated: bool,
}

/// The durable store. See the module doc.
#[derive(Debug)]
pub struct Store {
    shared: Arc<Shared>,
    readers: Arc<Readers>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    path: PathBuf,
}

fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))?;
    Ok(conn)
}

impl Store {
    /// Opens (or creates) the store in `dir`, prunes it once, and starts its writer thread.
    /// Blocking: call it from a blocking context.
    pub fn open(
        dir: &Path,
        config: &StoreConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(FILE_NAME);
        let capacity = usize::try_from(config.store_queue_positions).unwrap_or(usize::MAX);
        let shared = Arc::new(Shared::new(capacity, metrics));
        let mut writer = writer::Writer::open(&path, config.clone(), shared.clone())?;
        let pruned = writer
            .prune(now_ms())
            .map_err(|e| writer::damaged(&path, e))?;
        let readers = (0..READERS)
            .map(|_| open_reader(&path))
            .collect::<Result<Vec<_>, _>>()?;
        let handle = std::thread::Builder::new()
            .name("beacon-store".into())
            .spawn(move || writer.run())?;
        info!(path = %path.display(), pruned_points = pruned, "store open");
        Ok(Store {
            shared,
            readers: Arc::new(Readers {
                permits: Arc::new(Semaphore::new(READERS)),
                idle: Mutex::new(readers),
            }),
            writer: Mutex::new(Some(handle)),
            path,
        })
    }

    /// Where the database file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The observer to register with the hub: it queues every locally received fix.
    pub fn observer(&self) -> Arc<dyn HubObserver> {
        Arc::new(StoreObserver(self.shared.clone()))
    }

    /// Last-known positions received at or after `since_rts` (ms), with their group, offline.
    pub async fn last_known(&self, since_rts: i64) -> Result<Vec<(GroupId, Position)>, StoreError> {
        self.readers
            .run(move |conn| {
                let mut stmt = conn.prepare(
                    "SELECT device, grp, ts, rts, lat, lon, acc, alt, spd, hdg, batt
                     FROM last_known WHERE rts >= ?1",
                )?;
                let rows = stmt.query_map(params![since_rts], |row| {
                    let device: String = row.get(0)?;
                    let group: String = row.get(1)?;
                    Ok((
                        device,
                        group,
                        writer::read_fix(row, 2)?,
                        row.get::<_, i64>(3)?,
                    ))
                })?;
                let mut out = Vec::new();
                for row in rows {
                    let (device, group, fix, rts) = row?;
                    // Ids were valid when written; skip any that a hand edit broke.
                    let (Ok(device), Ok(group)) =
                        (DeviceId::parse(&device), GroupId::parse(&group))
                    else {
                        continue;
                    };
                    out.push((
                        group,
                        Position {
                            device,
                            fix,
                            rts,
                            online: false,
                        },
                    ));
                }
                Ok(out)
            })
            .await
    }

    /// The newest `query.limit` points of `device` within the range that `scope` admits,
    /// oldest first.
    pub async fn track(
        &self,
        device: &DeviceId,
        scope: &HistoryScope,
        query: TrackQuery,
    ) -> Result<Track, StoreError> {
        let device = device.as_str().to_owned();
        let (filter, groups) = scope.sql_filter(5);
        self.readers
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT ts, rts, lat, lon, acc, alt, spd, hdg, batt FROM track
                     WHERE device = ?1 AND ts >= ?2 AND ts <= ?3{filter}
                     ORDER BY ts DESC LIMIT ?4"
                ))?;
                let fetch = i64::try_from(query.limit).unwrap_or(i64::MAX - 1) + 1;
                let mut values: Vec<&dyn rusqlite::ToSql> =
                    vec![&device, &query.from, &query.to, &fetch];
                for g in &groups {
                    values.push(g);
                }
                let mut points = stmt
                    .query_map(values.as_slice(), |row| {
                        Ok(TrackPoint {
                            fix: writer::read_fix(row, 0)?,
                            rts: row.get(1)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let truncated = points.len() > query.limit;
                points.truncate(query.limit);
                points.reverse();
                Ok(Track { points, truncated })
            })
            .await
    }

    /// Hands every point of `device` with a fix time in `from..=to` that `scope` admits to
    /// `visit`, oldest first, on the blocking pool, and gives back `state`. Nothing is collected:
    /// memory stays what `state` holds, whatever the length of the range.
    pub async fn scan<S: Send + 'static>(
        &self,
        device: &DeviceId,
        scope: &HistoryScope,
        from: i64,
        to: i64,
        mut state: S,
        visit: fn(&mut S, &Fix),
    ) -> Result<S, StoreError> {
        let device = device.as_str().to_owned();
        let (filter, groups) = scope.sql_filter(4);
        self.readers
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(&format!(
                    "SELECT ts, rts, lat, lon, acc, alt, spd, hdg, batt FROM track
                     WHERE device = ?1 AND ts >= ?2 AND ts <= ?3{filter}
                     ORDER BY ts ASC"
                ))?;
                let mut values: Vec<&dyn rusqlite::ToSql> = vec![&device, &from, &to];
                for g in &groups {
                    values.push(g);
                }
                let mut rows = stmt.query(values.as_slice())?;
                while let Some(row) = rows.next()? {
                    visit(&mut state, &writer::read_fix(row, 0)?);
                }
                Ok(state)
            })
            .await
    }

    /// Devices with a last-known position in `group` (kept as long as their history), in id
    /// order, after `after` when given, at most `limit`.
    pub async fn group_devices(
        &self,
        group: &GroupId,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Result<Vec<DeviceId>, StoreError> {
        let group = group.as_str().to_owned();
        let after = after.map(|d| d.as_str().to_owned()).unwrap_or_default();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.readers
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(
                    "SELECT DISTINCT device FROM last_known WHERE grp = ?1 AND device > ?2
                     ORDER BY device LIMIT ?3",
                )?;
                let rows =
                    stmt.query_map(params![group, after, limit], |row| row.get::<_, String>(0))?;
                let mut out = Vec::new();
                for row in rows {
                    // Ids were valid when written; skip any that a hand edit broke.
                    if let Ok(device) = DeviceId::parse(&row?) {
                        out.push(device);
                    }
                }
                Ok(out)
            })
            .await
    }

    /// Writes what is queued, then stops the writer thread, waiting at most `wait` for it (a
    /// stuck disk must not hold the process past its shutdown grace). Positions flushed
    /// afterwards are dropped (and counted). Idempotent.
    pub async fn close(&self, wait: std::time::Duration) {
        self.shared.close();
        let handle = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(handle) = handle {
            let joined = tokio::time::timeout(wait, tokio::task::spawn_blocking(|| handle.join()));
            match joined.await {
                Ok(Ok(Ok(()))) => info!("store closed"),
                Ok(_) => error!("the store writer thread panicked; queued positions may be lost"),
                Err(_) => error!(
                    wait_secs = wait.as_secs(),
                    queued = self.shared.len(),
                    "the store writer did not finish in time; queued positions may be lost"
                ),
            }
        }
    }
}

impl Drop for Store {
    /// A store dropped without [`Store::close`] (a server task aborted, a failed start) still
    /// lets its writer write what is queued and end, instead of leaving the thread waiting.
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Opens the store when `--data-dir` is set, loads its last-known positions into the hub, and
/// registers it as an observer of the hub. `None` without `--data-dir` (memory only).
pub async fn start(
    config: &Config,
    hub: &Arc<Hub>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Arc<Store>>, StoreError> {
    let Some(dir) = config.data_dir.clone() else {
        return Ok(None);
    };
    let store_config = config.store.clone();
    let metrics = metrics.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, &store_config, metrics))
        .await
        .map_err(|_| StoreError::Closed)??;
    let since = now_ms() - (config.hub.retention_secs as i64).saturating_mul(1000);
    let loaded = store.last_known(since).await?;
    let mut by_group: std::collections::HashMap<GroupId, Vec<Position>> = Default::default();
    for (group, position) in loaded {
        by_group.entry(group).or_default().push(position);
    }
    let count: usize = by_group.values().map(Vec::len).sum();
    for (group, positions) in &by_group {
        hub.merge_remote(group, positions, &[]);
    }
    if count > 0 {
        info!(
            positions = count,
            groups = by_group.len(),
            "last-known positions loaded"
        );
    }
    hub.add_observer(store.observer());
    Ok(Some(Arc::new(store)))
}
