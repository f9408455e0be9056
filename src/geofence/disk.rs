//! Fences, proximity rules and every device's state against them in `DIR/geofences.sqlite3`
//! (with `--data-dir`), so a restart repeats and loses no event.
//!
//! Writes happen when something changes (a definition; a device's side, a pending change or a
//! dwell; a pair becoming near or separating), never for a fix that changes nothing, so the
//! common fix costs no disk write. Each is one small statement (WAL, `synchronous=NORMAL`).

use std::path::Path;

use rusqlite::{Connection, params};

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
pub(crate) enum Write<'a> {
    /// A fence defined or replaced.
    Fence {
        group: &'a str,
        id: &'a str,
        json: String,
        created: i64,
    },
    /// A fence and its members deleted.
    DeleteFence { group: &'a str, id: &'a str },
    /// A device's state against a fence.
    Member {
        group: &'a str,
        fence: &'a str,
        device: &'a str,
        member: Member,
    },
    /// A device no longer judged by a fence.
    DeleteMember {
        group: &'a str,
        fence: &'a str,
        device: &'a str,
    },
    /// A proximity rule set (`Some`) or removed with its pairs (`None`).
    Proximity {
        group: &'a str,
        rule: Option<ProximityRule>,
    },
    /// A device judged at `stamp`, after the group's newest fence was made.
    Seen {
        group: &'a str,
        device: &'a str,
        stamp: i64,
    },
    /// Every device's stamp in a group dropped (its last fence deleted).
    DeleteSeen { group: &'a str },
    /// A pair became near (`true`) or separated.
    Pair {
        group: &'a str,
        a: &'a str,
        b: &'a str,
        near: bool,
    },
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
    pub(crate) fn write(&mut self, writes: &[Write<'_>]) -> rusqlite::Result<()> {
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
