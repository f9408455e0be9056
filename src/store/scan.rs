//! Reading a whole range of a device's history in one pass, oldest first, without collecting
//! it (statistics), and the devices a group has history for; plus the SQL form of
//! [`HistoryScope`] that every history read shares with [`Store::track`].

use rusqlite::params;

use super::{HistoryScope, Store, StoreError, writer};
use crate::model::{DeviceId, Fix, GroupId};

/// The `AND …` clause that keeps only the points `scope` admits, with its parameters, which
/// are numbered from `?{first}`. Each readable group is matched as `,g,` inside the point's
/// `grps` column.
pub(super) fn scope_filter(scope: &HistoryScope, first: usize) -> (String, Vec<String>) {
    match scope {
        HistoryScope::All => (String::new(), Vec::new()),
        HistoryScope::Groups(groups) if groups.is_empty() => (" AND 0".to_owned(), Vec::new()),
        HistoryScope::Groups(groups) => {
            let terms: Vec<String> = (0..groups.len())
                .map(|i| format!("instr(grps, ?{}) > 0", i + first))
                .collect();
            let values = groups
                .iter()
                .map(|g| writer::groups_column(std::slice::from_ref(g)))
                .collect();
            (format!(" AND ({})", terms.join(" OR ")), values)
        }
    }
}

impl Store {
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
        let (filter, groups) = scope_filter(scope, 4);
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
}
