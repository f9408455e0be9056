//! Who may read which history points: the one rule, for the track route and every later
//! reader of the history (statistics).

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
}
