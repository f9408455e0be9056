//! Domain types: who is connected and where devices are.
//!
//! These types are what the hub stores and reasons about. They are deliberately separate from
//! the wire types in [`crate::protocol`]: the wire format is a contract with clients and changes
//! by adding optional fields, while these types change whenever the server's needs change.

use std::fmt;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest device or group id the protocol allows, in characters.
pub const MAX_ID_LEN: usize = 64;

/// Returns why `id` is not a valid device or group id, or `None` when it is valid.
///
/// Valid ids are 1 to 64 characters of `[A-Za-z0-9._:@-]`.
pub fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        return Some("must not be empty");
    }
    if id.len() > MAX_ID_LEN {
        return Some("must be at most 64 characters");
    }
    let allowed =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'@' | b'-');
    if !id.bytes().all(allowed) {
        return Some("may only contain A-Z a-z 0-9 . _ : @ -");
    }
    None
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Cheap to clone (a reference-counted string), since the hub keeps one per position
        /// and per subscription.
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// Validates `id` against the protocol's id rules.
            pub fn parse(id: &str) -> Result<Self, &'static str> {
                match id_problem(id) {
                    Some(problem) => Err(problem),
                    None => Ok(Self(Arc::from(id))),
                }
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

id_type!(
    /// A device id: something that reports positions.
    DeviceId
);
id_type!(
    /// A group id: a set of devices that see each other.
    GroupId
);

/// What a connected client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Publishes its own positions and watches its groups.
    Device,
    /// Watches groups only.
    Viewer,
    /// Watches its groups like a viewer, and manages them (device profiles...); does not
    /// publish positions.
    Admin,
}

impl Role {
    /// The protocol's name for the role.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Viewer => "viewer",
            Role::Admin => "admin",
        }
    }

    /// Parses the protocol's name for a role.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "device" => Some(Role::Device),
            "viewer" => Some(Role::Viewer),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    /// The protocol's name for a role, with an error that says what is allowed (for flags).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::parse(s).ok_or_else(|| format!("role must be device, viewer or admin, not {s:?}"))
    }
}

/// Who a client is and what it may use, as established at connect time.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// Device or viewer id (the token's `sub`, or `?id=` without auth).
    pub id: DeviceId,
    /// Groups the client may publish to and watch.
    pub groups: Vec<GroupId>,
    /// Device or viewer.
    pub role: Role,
    /// When the identity stops being valid (token `exp`), in ms since the epoch.
    pub expires_at_ms: Option<i64>,
}

impl Identity {
    /// Whether this identity may publish positions (devices only).
    pub fn may_publish(&self) -> bool {
        self.role == Role::Device
    }

    /// Whether this identity may manage `group` (admins of the group).
    pub fn may_manage(&self, group: &str) -> bool {
        self.role == Role::Admin && self.may_use(group)
    }

    /// Whether this identity may watch `group`.
    pub fn may_use(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g.as_str() == group)
    }
}

/// One validated GPS fix, as a device reported it.
#[derive(Clone, Debug, PartialEq)]
pub struct Fix {
    /// Latitude in degrees, within [-90, 90].
    pub lat: f64,
    /// Longitude in degrees, within [-180, 180].
    pub lon: f64,
    /// Fix time, ms since the epoch (the receive time when the device sent none).
    pub ts: i64,
    /// Horizontal accuracy in metres.
    pub acc: Option<f64>,
    /// Altitude in metres.
    pub alt: Option<f64>,
    /// Speed in m/s.
    pub spd: Option<f64>,
    /// Heading in degrees, within [0, 360].
    pub hdg: Option<f64>,
    /// Battery level in percent, within [0, 100].
    pub batt: Option<f64>,
}

impl Fix {
    /// A fix with a position and time only (no accuracy, altitude, speed, heading or battery).
    pub fn new(lat: f64, lon: f64, ts: i64) -> Fix {
        Fix {
            lat,
            lon,
            ts,
            acc: None,
            alt: None,
            spd: None,
            hdg: None,
            batt: None,
        }
    }
}

/// The latest known position of one device, as the hub holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct Position {
    /// Which device.
    pub device: DeviceId,
    /// Its latest fix.
    pub fix: Fix,
    /// When a server received the fix, ms since the epoch.
    pub rts: i64,
    /// Whether the device currently counts as online.
    pub online: bool,
}

/// Something that happened to a device at a moment (an alarm, entering or leaving a region).
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Unique, and the same wherever and however often the event is seen (derived from what
    /// the event is, so a retried report gives the same id).
    pub id: String,
    /// `alarm`, `region.enter`, `region.exit`.
    /// Also `geofence.enter`, `geofence.exit`, `geofence.dwell`, `proximity.enter`,
    /// `proximity.exit`.
    pub kind: &'static str,
    /// The device it happened to.
    pub device: DeviceId,
    /// The group it is reported to.
    pub group: GroupId,
    /// The fix time that caused it, ms since the epoch.
    pub ts: i64,
    /// Where, when known.
    pub lat: Option<f64>,
    /// Where, when known.
    pub lon: Option<f64>,
    /// The alarm's name (`alarm`).
    pub alarm: Option<String>,
    /// The device-side region's name (`region.*`).
    pub region: Option<String>,
    /// The geofence's id (`geofence.*`).
    pub geofence: Option<String>,
    /// The geofence's name (`geofence.*`).
    pub geofence_name: Option<String>,
    /// The other device (`proximity.*`).
    pub peer: Option<String>,
    /// Distance between the two devices, metres (`proximity.*`).
    pub distance_m: Option<f64>,
    /// Why, when not a device's move (`deleted`: the geofence was deleted).
    pub reason: Option<String>,
}

/// Milliseconds since the Unix epoch, by the system clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_rules() {
        assert!(id_problem("bus-17").is_none());
        assert!(id_problem("a.b_c:d@e-f").is_none());
        assert!(id_problem(&"x".repeat(64)).is_none());
        assert_eq!(id_problem(""), Some("must not be empty"));
        assert_eq!(
            id_problem(&"x".repeat(65)),
            Some("must be at most 64 characters")
        );
        assert!(id_problem("a b").is_some());
        assert!(id_problem("é").is_some());
        assert!(id_problem("a/b").is_some());
    }
}
