//! Who each client of a run is: its role, number, id, group, codec, target and source
//! address ([`ClientSpec`]), and the ids and URL it connects with.
//!
//! Everything here follows from the plan and the client's index, so every worker process
//! computes the same spec for the same client without asking the parent.

use std::net::{Ipv4Addr, SocketAddr};

use crate::config::{Codec, Plan};

/// Whether a client publishes, watches, or watches and then stops reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Publishes fixes and watches its group.
    Device,
    /// Watches its group.
    Viewer,
    /// Connects as a viewer, reads its greeting, then stops reading (`--stalled`).
    Stalled,
}

impl Role {
    /// The `role` query value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Viewer | Role::Stalled => "viewer",
        }
    }
}

/// Who client number `index` of the run is.
///
/// Indices `0..viewers` are viewers, then come the devices, so viewers connect first during
/// the ramp and see the devices' traffic from its start; the stalled viewers come last. Device
/// (or viewer, or stalled viewer) `n` is in group `n % groups`; within a group, members take
/// the targets in turn and, with the `mixed` codec, alternate codecs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSpec {
    /// Global client index, `0..viewers + devices + stalled`.
    pub index: u32,
    /// Device, viewer or stalled viewer.
    pub role: Role,
    /// Device number (`0..devices`), viewer number (`0..viewers`) or stalled viewer number
    /// (`0..stalled`).
    pub number: u32,
    /// Device or viewer id sent in the query.
    pub id: String,
    /// Group number.
    pub group: u32,
    /// Codec of this connection.
    pub codec: Codec,
    /// Index into the plan's targets.
    pub target: usize,
    /// Local address to bind, for IPv4 loopback targets.
    pub source: Option<Ipv4Addr>,
}

/// Id of device `d` in run `run_id`.
pub fn device_id(run_id: &str, d: u32) -> String {
    format!("{run_id}-d{d}")
}

/// Id of group `g` in run `run_id`.
pub fn group_id(run_id: &str, g: u32) -> String {
    format!("{run_id}-g{g}")
}

/// Device number from a record id of this run (`None` for anybody else's device).
pub(crate) fn parse_device(prefix: &str, id: &str, devices: u32) -> Option<u32> {
    let d: u32 = id.strip_prefix(prefix)?.parse().ok()?;
    (d < devices).then_some(d)
}

impl ClientSpec {
    /// The spec of client `index` of a plan.
    pub fn new(plan: &Plan, index: u32) -> ClientSpec {
        let (role, number) = if index < plan.viewers {
            (Role::Viewer, index)
        } else if let Some(d) = plan.device_of(index) {
            (Role::Device, d)
        } else {
            (Role::Stalled, index - plan.viewers - plan.devices)
        };
        let id = match role {
            Role::Device => device_id(&plan.run_id, number),
            Role::Viewer => format!("{}-v{number}", plan.run_id),
            Role::Stalled => format!("{}-s{number}", plan.run_id),
        };
        let groups = plan.groups.max(1);
        let group = number % groups;
        // Deal the members of each group over targets and codecs in turn: a group must span
        // every server instance and, with `mixed`, both codecs, or cross-instance relaying and
        // per-codec encoding would go untested. (Dealing by client index would not do: with 10
        // groups and 2 targets, all of a group's members would share one target.)
        let turn = number / groups + group;
        let targets = plan.targets.len().max(1) as u32;
        let target = (turn % targets) as usize;
        let source = match plan.targets.get(target).map(|t| (t.loopback, t.addr)) {
            Some((true, SocketAddr::V4(_))) => {
                let n = u8::try_from(index % u32::from(plan.source_addrs.max(1))).unwrap_or(0);
                Some(Ipv4Addr::new(127, 0, 0, 1 + n))
            }
            _ => None,
        };
        ClientSpec {
            index,
            role,
            number,
            id,
            group,
            codec: plan.codec.for_client(turn / targets),
            target,
            source,
        }
    }

    /// Full WebSocket URL with the identity query.
    pub(crate) fn url(&self, plan: &Plan) -> String {
        let base = plan
            .targets
            .get(self.target)
            .map(|t| t.url.as_str())
            .unwrap_or_default();
        let mut url = format!(
            "{base}?id={}&groups={}&role={}",
            self.id,
            group_id(&plan.run_id, self.group),
            self.role.name()
        );
        if let Some(token) = &plan.token {
            url.push_str("&access_token=");
            url.push_str(&percent_encode(token));
        }
        url
    }
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod testing {
    //! A small plan for the tests of the client modules.

    use crate::config::{Center, CodecChoice, Plan, Scenario, Target};

    /// Three groups, mixed codecs, two loopback targets (IPv4 and IPv6), a token.
    pub(crate) fn plan(devices: u32, viewers: u32, source_addrs: u8) -> Plan {
        Plan {
            run_id: "lt1".into(),
            scenario: Scenario::Fleet,
            devices,
            viewers,
            stalled: 0,
            stall_after_ms: 0,
            groups: 3,
            rate_hz: 1.0,
            codec: CodecChoice::Mixed,
            ramp_per_s: 100.0,
            duration_ms: 1000,
            settle_ms: 1000,
            connect_timeout_ms: 1000,
            max_time_ms: 10_000,
            targets: vec![
                Target {
                    url: "ws://127.0.0.1:1/v1/ws".into(),
                    addr: "127.0.0.1:1".parse().unwrap(),
                    loopback: true,
                },
                Target {
                    url: "ws://[::1]:2/v1/ws".into(),
                    addr: "[::1]:2".parse().unwrap(),
                    loopback: true,
                },
            ],
            source_addrs,
            token: Some("a.b+c".into()),
            workers: 1,
            center: Center {
                lat: 52.5,
                lon: 13.4,
            },
            seed: 1,
            storm_fixes: 3,
            storm_pause_ms: 100,
            base_ms: 1_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::plan;
    use super::*;

    #[test]
    fn specs_put_viewers_first_and_spread_targets_and_sources() {
        let p = plan(10, 2, 4);
        let v = ClientSpec::new(&p, 1);
        assert_eq!((v.role, v.number, v.group), (Role::Viewer, 1, 1));
        let d = ClientSpec::new(&p, 2);
        assert_eq!(
            (d.role, d.number, d.group, d.id.as_str()),
            (Role::Device, 0, 0, "lt1-d0")
        );
        assert_eq!(d.target, 0);
        assert_eq!(d.source, Some(Ipv4Addr::new(127, 0, 0, 3)));
        let d1 = ClientSpec::new(&p, 3);
        assert_eq!(d1.target, 1);
        assert_eq!(d1.source, None, "no IPv4 source address for an IPv6 target");
    }

    #[test]
    fn stalled_viewers_come_last_as_viewers_of_every_group() {
        let mut p = plan(4, 2, 1);
        p.stalled = 4;
        let specs: Vec<ClientSpec> = (6..10).map(|i| ClientSpec::new(&p, i)).collect();
        assert!(specs.iter().all(|s| s.role == Role::Stalled));
        assert_eq!(
            specs.iter().map(|s| s.number).collect::<Vec<_>>(),
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            specs.iter().map(|s| s.group).collect::<Vec<_>>(),
            vec![0, 1, 2, 0]
        );
        assert_eq!(specs[1].id, "lt1-s1");
        let url = specs[1].url(&p);
        assert!(url.contains("id=lt1-s1&groups=lt1-g1&role=viewer"), "{url}");
        assert_eq!(ClientSpec::new(&p, 5).role, Role::Device);
    }

    #[test]
    fn every_group_spans_all_targets_and_both_codecs() {
        let p = plan(12, 0, 1);
        // Group 0 holds devices 0, 3, 6, 9.
        let group0: Vec<(usize, Codec)> = [0, 3, 6, 9]
            .into_iter()
            .map(|d| ClientSpec::new(&p, d))
            .map(|s| (s.target, s.codec))
            .collect();
        assert_eq!(
            group0,
            vec![
                (0, Codec::Json),
                (1, Codec::Json),
                (0, Codec::Msgpack),
                (1, Codec::Msgpack)
            ]
        );
        let mut one_target = plan(12, 0, 1);
        one_target.targets.truncate(1);
        let codecs: Vec<Codec> = [1, 4, 7, 10]
            .into_iter()
            .map(|d| ClientSpec::new(&one_target, d).codec)
            .collect();
        assert_eq!(
            codecs,
            vec![Codec::Msgpack, Codec::Json, Codec::Msgpack, Codec::Json]
        );
    }

    #[test]
    fn urls_carry_identity_and_token() {
        let p = plan(10, 2, 1);
        let url = ClientSpec::new(&p, 4).url(&p);
        assert_eq!(
            url,
            "ws://127.0.0.1:1/v1/ws?id=lt1-d2&groups=lt1-g2&role=device&access_token=a.b%2Bc"
        );
        assert!(ClientSpec::new(&p, 0).url(&p).contains("role=viewer"));
    }

    #[test]
    fn only_this_runs_devices_are_recognised() {
        assert_eq!(parse_device("lt1-d", "lt1-d42", 100), Some(42));
        assert_eq!(parse_device("lt1-d", "lt1-d420", 100), None);
        assert_eq!(parse_device("lt1-d", "lt2-d4", 100), None);
        assert_eq!(parse_device("lt1-d", "bus-17", 100), None);
        assert_eq!(parse_device("lt1-d", "lt1-d", 100), None);
    }
}
