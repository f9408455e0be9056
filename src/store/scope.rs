//! Who may read which history points: the one rule, for the track route and every later
//! reader of the history (statistics).

use super::writer;
use crate::model::{DeviceId, GroupId, Identity, Role};

/// The points of a device's history a reader may see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryScope {
    /// Every point: the device reading its own history, or a server without authentication.
    All,
    /// Only points published to at least one of these groups (none: no point at all).
    Groups(Vec<GroupId>),
}

impl HistoryScope {
    /// The rule. Without an identity (authentication off) everything is readable. The device
    /// itself, with the same id *and* the device role, reads its whole history. Anyone else
    /// (a viewer or admin, a viewer token whose `sub` happens to equal the device id, another
    /// device) reads only points published to a group it may watch now: a point published to
    /// `family` stays out of reach of a `work` viewer, whenever the device joined `work`.
    pub fn for_reader(reader: Option<&Identity>, device: &DeviceId) -> HistoryScope {
        match reader {
            None => HistoryScope::All,
            Some(identity) if identity.id == *device && identity.role == Role::Device => {
                HistoryScope::All
            }
            Some(identity) => HistoryScope::Groups(identity.groups.clone()),
        }
    }

    /// The rule in SQL, shared by every history read: the `AND …` clause that keeps only the
    /// points in scope, with its parameters, numbered from `?{first}`. Each readable group is
    /// matched as `,g,` inside the point's `grps` column.
    pub(super) fn sql_filter(&self, first: usize) -> (String, Vec<String>) {
        match self {
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

    /// Whether a point published to `groups` is in scope.
    pub fn admits<'a>(&self, mut groups: impl Iterator<Item = &'a str>) -> bool {
        match self {
            HistoryScope::All => true,
            HistoryScope::Groups(allowed) => {
                groups.any(|g| allowed.iter().any(|a| a.as_str() == g))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(id: &str, role: Role, groups: &[&str]) -> Identity {
        Identity {
            id: DeviceId::parse(id).unwrap(),
            groups: groups.iter().map(|g| GroupId::parse(g).unwrap()).collect(),
            role,
            expires_at_ms: None,
        }
    }

    #[test]
    fn only_the_device_itself_reads_everything() {
        let car = DeviceId::parse("car").unwrap();
        assert_eq!(HistoryScope::for_reader(None, &car), HistoryScope::All);
        let own = identity("car", Role::Device, &["family"]);
        assert_eq!(
            HistoryScope::for_reader(Some(&own), &car),
            HistoryScope::All
        );
        let viewer_named_car = identity("car", Role::Viewer, &["work"]);
        let scope = HistoryScope::for_reader(Some(&viewer_named_car), &car);
        assert!(scope.admits(["work"].into_iter()));
        assert!(!scope.admits(["family"].into_iter()));
        assert!(!scope.admits(std::iter::empty()));
    }

    #[test]
    fn the_rule_in_sql() {
        assert_eq!(HistoryScope::All.sql_filter(4), (String::new(), vec![]));
        assert_eq!(
            HistoryScope::Groups(vec![]).sql_filter(4),
            (" AND 0".to_owned(), vec![])
        );
        let groups = ["work", "family"].map(|g| GroupId::parse(g).unwrap());
        assert_eq!(
            HistoryScope::Groups(groups.to_vec()).sql_filter(5),
            (
                " AND (instr(grps, ?5) > 0 OR instr(grps, ?6) > 0)".to_owned(),
                vec![",work,".to_owned(), ",family,".to_owned()]
            )
        );
    }
}
