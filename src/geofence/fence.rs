//! A geofence: its validated definition, and the state machine that judges one device's fixes
//! against it. Pure: no I/O, no clock (every time is a fix time passed in).
//!
//! # The rules
//! - A device's first fix after the fence exists sets its side without an event.
//! - A fix whose `acc` is worse than the fence's `max_acc_m` is not judged (a fix without `acc`
//!   is).
//! - A fix is *inside* when it lies in the shape (boundary included), *outside* when it lies
//!   more than `hysteresis_m` beyond the boundary; in the band between it counts for the side
//!   the device is confirmed on, so jitter across the boundary changes nothing.
//! - A fix on the other side starts a candidate change; a later fix back on the confirmed side
//!   cancels it; the first fix on the new side at least `debounce_s` after the candidate's first
//!   fix confirms it (at once when `debounce_s` is 0). The enter or exit carries the candidate's
//!   first fix (time and place).
//! - Inside, once a fix comes at least `dwell_s` after the visit began (the first fix inside),
//!   one dwell per visit, with that fix's time.
//! - A fix older than the newest fix judged for this device does not change anything (the
//!   caller filters on the device's latest fix time).

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::shape::{GeometryBody, Shape, ShapeBounds, ShapeError, body_json};
use crate::model::{DeviceId, Fix};

/// Longest fence name, in characters.
pub(crate) const MAX_NAME_CHARS: usize = 64;

/// Longest `dwell_s`: one week.
pub(crate) const MAX_DWELL_S: u64 = 7 * 86_400;

/// Largest `debounce_s`: one hour.
pub(crate) const MAX_DEBOUNCE_S: u64 = 3_600;

/// Largest `max_acc_m` and `hysteresis_m`, metres.
pub(crate) const MAX_NOISE_M: f64 = 10_000.0;

/// The defaults of the per-fence noise settings and the bounds of a definition (from the
/// configuration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct FenceRules {
    /// Shape bounds.
    pub(crate) shape: ShapeBounds,
    /// Most ids in `devices`.
    pub(crate) max_devices: usize,
    /// Default accuracy gate, metres.
    pub(crate) max_acc_m: f64,
    /// Default hysteresis margin, metres.
    pub(crate) hysteresis_m: f64,
    /// Default debounce, seconds.
    pub(crate) debounce_s: u64,
}

/// The body of `POST` / `PUT .../geofences`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FenceBody {
    /// Shown in events.
    pub(crate) name: String,
    /// Circle or polygon.
    pub(crate) geometry: GeometryBody,
    /// One dwell per visit after this long inside.
    #[serde(default)]
    pub(crate) dwell_s: Option<u64>,
    /// Only these devices (default: all of the group).
    #[serde(default)]
    pub(crate) devices: Option<Vec<String>>,
    /// Accuracy gate, metres.
    #[serde(default)]
    pub(crate) max_acc_m: Option<f64>,
    /// Leaving margin, metres.
    #[serde(default)]
    pub(crate) hysteresis_m: Option<f64>,
    /// Debounce, seconds.
    #[serde(default)]
    pub(crate) debounce_s: Option<u64>,
}

/// Why a definition was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum FenceError {
    /// The geometry.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// Any other field, named.
    #[error("{0}")]
    Field(String),
}

/// A validated fence.
#[derive(Clone, Debug)]
pub(crate) struct Fence {
    /// Unique within the group.
    pub(crate) id: String,
    pub(crate) name: String,
    /// The geometry as given (answers, storage).
    pub(crate) geometry: GeometryBody,
    pub(crate) shape: Shape,
    pub(crate) dwell_s: Option<u64>,
    /// `None`: every device of the group.
    pub(crate) devices: Option<HashSet<DeviceId>>,
    pub(crate) max_acc_m: f64,
    pub(crate) hysteresis_m: f64,
    pub(crate) debounce_s: u64,
    /// `[min_lon, min_lat, max_lon, max_lat]`: where a fix may be judged anything but far
    /// outside (the shape grown by the hysteresis margin); the group's spatial index holds it.
    pub(crate) bbox: [f64; 4],
    /// When this instance (or the one that defined it) made the fence, a stamp of
    /// `Geofences::stamp` (microseconds, increasing): a device judged after it without a state
    /// against it is far outside. Set by the engine, 0 until then.
    pub(crate) created: i64,
}

impl Fence {
    /// Validates `body` as fence `id`.
    pub(crate) fn new(
        id: String,
        body: FenceBody,
        rules: &FenceRules,
    ) -> Result<Fence, FenceError> {
        let field = |m: String| FenceError::Field(m);
        let name = body.name.trim();
        let chars = name.chars().count();
        if chars == 0 || chars > MAX_NAME_CHARS {
            return Err(field(format!(
                "name must be 1 to {MAX_NAME_CHARS} characters"
            )));
        }
        if name.chars().any(char::is_control) {
            return Err(field("name must not contain control characters".into()));
        }
        let shape = Shape::from_body(&body.geometry, rules.shape)?;
        if let Some(d) = body.dwell_s
            && !(1..=MAX_DWELL_S).contains(&d)
        {
            return Err(field(format!("dwell_s must be from 1 to {MAX_DWELL_S}")));
        }
        let devices = match body.devices {
            None => None,
            Some(list) => {
                if list.len() > rules.max_devices {
                    return Err(field(format!(
                        "devices may list at most {} ids",
                        rules.max_devices
                    )));
                }
                let mut set = HashSet::with_capacity(list.len());
                for id in &list {
                    let device = DeviceId::parse(id)
                        .map_err(|why| field(format!("devices: id {id:?} {why}")))?;
                    set.insert(device);
                }
                Some(set)
            }
        };
        let metres = |name: &str, value: Option<f64>, default: f64, min: f64| match value {
            None => Ok(default),
            Some(v) if v.is_finite() && (min..=MAX_NOISE_M).contains(&v) => Ok(v),
            Some(_) => Err(field(format!(
                "{name} must be from {min} to {MAX_NOISE_M} metres"
            ))),
        };
        let max_acc_m = metres("max_acc_m", body.max_acc_m, rules.max_acc_m, 1.0)?;
        let hysteresis_m = metres("hysteresis_m", body.hysteresis_m, rules.hysteresis_m, 0.0)?;
        let debounce_s = body.debounce_s.unwrap_or(rules.debounce_s);
        if debounce_s > MAX_DEBOUNCE_S {
            return Err(field(format!(
                "debounce_s must be from 0 to {MAX_DEBOUNCE_S}"
            )));
        }
        let bbox = shape.grown_box(hysteresis_m);
        Ok(Fence {
            bbox,
            created: 0,
            id,
            name: name.to_owned(),
            geometry: body.geometry,
            shape,
            dwell_s: body.dwell_s,
            devices,
            max_acc_m,
            hysteresis_m,
            debounce_s,
        })
    }

    /// The state of a device known to be far outside: judged after the fence existed without
    /// coming near it. Judging from it gives what the state its first fix made would give.
    pub(crate) fn far_outside() -> Member {
        Member {
            inside: false,
            since_ts: 0,
            dwelled: false,
            candidate: None,
            ts: 0,
        }
    }

    /// Whether the fence applies to `device`.
    pub(crate) fn covers(&self, device: &DeviceId) -> bool {
        self.devices.as_ref().is_none_or(|d| d.contains(device))
    }

    /// The fence as answered and stored (every setting explicit).
    pub(crate) fn to_json(&self) -> Value {
        let mut devices: Option<Vec<&str>> = self
            .devices
            .as_ref()
            .map(|d| d.iter().map(DeviceId::as_str).collect());
        if let Some(d) = devices.as_mut() {
            d.sort_unstable();
        }
        serde_json::json!({
            "id": self.id,
            "name": self.name,
            "geometry": body_json(&self.geometry),
            "dwell_s": self.dwell_s,
            "devices": devices,
            "max_acc_m": self.max_acc_m,
            "hysteresis_m": self.hysteresis_m,
            "debounce_s": self.debounce_s,
        })
    }

    /// Judges `fix` for a device whose state is `member` (`None`: its first fix since the fence
    /// exists), updating it. Returns what happened (none, a change of side, a dwell, or a change
    /// and a dwell) and whether `member` changed.
    pub(crate) fn judge(&self, member: &mut Option<Member>, fix: &Fix) -> (Vec<Change>, bool) {
        if fix
            .acc
            .is_some_and(|acc| acc.is_nan() || acc > self.max_acc_m)
        {
            return (Vec::new(), false);
        }
        let distance = self.shape.distance_m(fix.lat, fix.lon, self.hysteresis_m);
        let Some(m) = member else {
            let inside = distance.is_some_and(|d| d <= 0.0);
            *member = Some(Member {
                inside,
                since_ts: fix.ts,
                dwelled: false,
                candidate: None,
                ts: fix.ts,
            });
            return (Vec::new(), true);
        };
        let observed_inside = match distance {
            Some(d) if d <= 0.0 => true,
            Some(d) if d <= self.hysteresis_m => m.inside,
            _ => false,
        };
        if observed_inside == m.inside {
            let mut changed = m.candidate.take().is_some();
            let dwell: Vec<Change> = self.dwell(m, fix).into_iter().collect();
            changed |= !dwell.is_empty();
            if changed {
                m.ts = m.ts.max(fix.ts);
            }
            return (dwell, changed);
        }
        m.ts = m.ts.max(fix.ts);
        let candidate = *m.candidate.get_or_insert(Candidate {
            ts: fix.ts,
            lat: fix.lat,
            lon: fix.lon,
        });
        let debounce_ms = i64::try_from(self.debounce_s.saturating_mul(1000)).unwrap_or(i64::MAX);
        if fix.ts.saturating_sub(candidate.ts) < debounce_ms {
            return (Vec::new(), true);
        }
        m.inside = observed_inside;
        m.since_ts = candidate.ts;
        m.dwelled = false;
        m.candidate = None;
        let kind = if observed_inside {
            ChangeKind::Enter
        } else {
            ChangeKind::Exit
        };
        let mut changes = vec![Change {
            kind,
            ts: candidate.ts,
            lat: candidate.lat,
            lon: candidate.lon,
        }];
        // A debounce as long as the dwell confirms both with this fix.
        changes.extend(self.dwell(m, fix));
        (changes, true)
    }

    /// A dwell, when `m` is inside, has not dwelt this visit, and `fix` is late enough.
    fn dwell(&self, m: &mut Member, fix: &Fix) -> Option<Change> {
        let dwell_s = self.dwell_s?;
        let dwell_ms = i64::try_from(dwell_s * 1000).unwrap_or(i64::MAX);
        if !m.inside || m.dwelled || fix.ts.saturating_sub(m.since_ts) < dwell_ms {
            return None;
        }
        m.dwelled = true;
        Some(Change {
            kind: ChangeKind::Dwell,
            ts: fix.ts,
            lat: fix.lat,
            lon: fix.lon,
        })
    }
}

/// One device's state against one fence.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Member {
    /// The confirmed side.
    pub(crate) inside: bool,
    /// Fix time of the first fix on the confirmed side (a visit's start, for dwell).
    pub(crate) since_ts: i64,
    /// Whether this visit's dwell was reported.
    pub(crate) dwelled: bool,
    /// A change waiting for its debounce.
    pub(crate) candidate: Option<Candidate>,
    /// Newest fix time that changed this state.
    pub(crate) ts: i64,
}

impl Member {
    /// Whether the state needs judging even far from the fence: inside, or a change pending.
    /// Other states are dropped from memory (the device is then known to be far outside).
    pub(crate) fn active(&self) -> bool {
        self.inside || self.candidate.is_some()
    }
}

/// The first fix on the other side, waiting for the debounce.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Candidate {
    pub(crate) ts: i64,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
}

/// What a fix did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChangeKind {
    Enter,
    Exit,
    Dwell,
}

impl ChangeKind {
    /// The event kind.
    pub(crate) fn event_kind(self) -> &'static str {
        match self {
            ChangeKind::Enter => "geofence.enter",
            ChangeKind::Exit => "geofence.exit",
            ChangeKind::Dwell => "geofence.dwell",
        }
    }
}

/// A change of side or a dwell, with the fix it is reported at.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Change {
    pub(crate) kind: ChangeKind,
    pub(crate) ts: i64,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: FenceRules = FenceRules {
        shape: ShapeBounds {
            max_vertices: 100,
            max_radius_m: 10_000.0,
        },
        max_devices: 3,
        max_acc_m: 50.0,
        hysteresis_m: 20.0,
        debounce_s: 10,
    };

    /// A 100 m circle at (0, 0) with the given debounce and dwell.
    fn fence(debounce_s: u64, dwell_s: Option<u64>) -> Fence {
        let body = FenceBody {
            name: "yard".into(),
            geometry: GeometryBody::Circle {
                center: vec![0.0, 0.0],
                radius_m: 100.0,
            },
            dwell_s,
            devices: None,
            max_acc_m: None,
            hysteresis_m: None,
            debounce_s: Some(debounce_s),
        };
        Fence::new("gf_1".into(), body, &RULES).unwrap()
    }

    /// A fix `m` metres north of the centre at `s` seconds.
    fn at(m: f64, s: i64) -> Fix {
        Fix::new(m / 111_195.0, 0.0, s * 1000)
    }

    fn kinds(changes: &[Change]) -> Vec<ChangeKind> {
        changes.iter().map(|c| c.kind).collect()
    }

    #[test]
    fn the_first_fix_sets_the_side_silently() {
        let f = fence(0, None);
        let mut m = None;
        assert_eq!(f.judge(&mut m, &at(0.0, 0)), (vec![], true));
        assert!(m.unwrap().inside);
        let mut m = None;
        f.judge(&mut m, &at(500.0, 0));
        assert!(!m.unwrap().inside);
    }

    #[test]
    fn hysteresis_keeps_jitter_at_the_boundary_silent() {
        let f = fence(0, None);
        let mut m = None;
        f.judge(&mut m, &at(0.0, 0));
        for (i, d) in [95.0, 110.0, 99.0, 115.0, 101.0, 90.0]
            .into_iter()
            .enumerate()
        {
            let (changes, _) = f.judge(&mut m, &at(d, i as i64 + 1));
            assert!(changes.is_empty(), "{d} m");
        }
        let (changes, _) = f.judge(&mut m, &at(125.0, 10));
        assert_eq!(kinds(&changes), [ChangeKind::Exit]);
        assert_eq!(changes[0].ts, 10_000);
    }

    #[test]
    fn debounce_needs_the_new_side_to_last_and_reports_its_first_fix() {
        let f = fence(10, None);
        let mut m = None;
        f.judge(&mut m, &at(500.0, 0));
        assert!(f.judge(&mut m, &at(0.0, 1)).0.is_empty());
        // Back outside before 10 s: cancelled.
        assert!(f.judge(&mut m, &at(500.0, 5)).0.is_empty());
        assert!(f.judge(&mut m, &at(0.0, 12)).0.is_empty());
        assert!(f.judge(&mut m, &at(10.0, 21)).0.is_empty());
        let (changes, _) = f.judge(&mut m, &at(20.0, 22));
        assert_eq!(kinds(&changes), [ChangeKind::Enter]);
        assert_eq!(changes[0].ts, 12_000, "the first fix inside");
        assert_eq!(changes[0].lat, 0.0);
    }

    #[test]
    fn one_dwell_per_visit() {
        let f = fence(0, Some(60));
        let mut m = None;
        f.judge(&mut m, &at(500.0, 0));
        assert_eq!(
            kinds(&f.judge(&mut m, &at(0.0, 100)).0),
            [ChangeKind::Enter]
        );
        assert!(f.judge(&mut m, &at(0.0, 159)).0.is_empty());
        let (changes, _) = f.judge(&mut m, &at(0.0, 160));
        assert_eq!(kinds(&changes), [ChangeKind::Dwell]);
        assert_eq!(changes[0].ts, 160_000);
        assert!(f.judge(&mut m, &at(0.0, 1000)).0.is_empty());
        assert_eq!(
            kinds(&f.judge(&mut m, &at(500.0, 1001)).0),
            [ChangeKind::Exit]
        );
        assert_eq!(
            kinds(&f.judge(&mut m, &at(0.0, 1002)).0),
            [ChangeKind::Enter]
        );
        assert_eq!(
            kinds(&f.judge(&mut m, &at(0.0, 1062)).0),
            [ChangeKind::Dwell]
        );
    }

    #[test]
    fn inaccurate_fixes_are_not_judged() {
        let f = fence(0, None);
        let mut m = None;
        f.judge(&mut m, &at(500.0, 0));
        let mut fix = at(0.0, 1);
        fix.acc = Some(80.0);
        assert_eq!(f.judge(&mut m, &fix), (vec![], false));
        fix.acc = Some(50.0);
        assert_eq!(kinds(&f.judge(&mut m, &fix).0), [ChangeKind::Enter]);
    }

    #[test]
    fn definitions_are_checked() {
        let body = |f: &dyn Fn(&mut FenceBody)| {
            let mut b = FenceBody {
                name: "yard".into(),
                geometry: GeometryBody::Circle {
                    center: vec![0.0, 0.0],
                    radius_m: 100.0,
                },
                dwell_s: None,
                devices: None,
                max_acc_m: None,
                hysteresis_m: None,
                debounce_s: None,
            };
            f(&mut b);
            Fence::new("x".into(), b, &RULES)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert!(body(&|_| ()).is_ok());
        assert!(body(&|b| b.name = " ".into()).unwrap_err().contains("name"));
        assert!(
            body(&|b| b.name = "x".repeat(65))
                .unwrap_err()
                .contains("name")
        );
        assert!(
            body(&|b| b.devices = Some(vec!["a".into(); 4]))
                .unwrap_err()
                .contains("devices")
        );
        assert!(
            body(&|b| b.devices = Some(vec!["a b".into()]))
                .unwrap_err()
                .contains("devices")
        );
        assert!(
            body(&|b| b.dwell_s = Some(0))
                .unwrap_err()
                .contains("dwell_s")
        );
        assert!(
            body(&|b| b.max_acc_m = Some(-1.0))
                .unwrap_err()
                .contains("max_acc_m")
        );
        assert!(
            body(&|b| b.hysteresis_m = Some(f64::NAN))
                .unwrap_err()
                .contains("hysteresis_m")
        );
        assert!(
            body(&|b| b.debounce_s = Some(7200))
                .unwrap_err()
                .contains("debounce_s")
        );
    }
}
