//! `--demo N`: simulated devices driving a street grid, so a fresh server shows motion at once.
//!
//! Each vehicle drives along the streets of a square grid (blocks of [`BLOCK_M`] metres) centred
//! on `--demo-center`, at a steady speed of its own, turning at some crossings and never leaving
//! the grid. Every second each one reports a fix to group `demo` through the hub, exactly as a
//! device on a socket would, and holds presence like a connected device.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio_util::sync::CancellationToken;

use crate::hub::Hub;
use crate::model::{DeviceId, Fix, GroupId, now_ms};

/// Group the simulated devices report to.
pub(crate) const GROUP: &str = "demo";
/// Length of one block of the street grid, in metres.
pub(crate) const BLOCK_M: f64 = 160.0;
/// How far the grid reaches from the centre, in blocks.
const REACH_BLOCKS: i32 = 12;
/// Metres per degree of latitude.
const M_PER_DEG: f64 = 111_320.0;

/// A heading along the grid.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Dir {
    North,
    East,
    South,
    West,
}

impl Dir {
    fn step(self) -> (i32, i32) {
        match self {
            Dir::North => (0, 1),
            Dir::East => (1, 0),
            Dir::South => (0, -1),
            Dir::West => (-1, 0),
        }
    }

    fn degrees(self) -> f64 {
        match self {
            Dir::North => 0.0,
            Dir::East => 90.0,
            Dir::South => 180.0,
            Dir::West => 270.0,
        }
    }

    fn turns(self) -> [Dir; 3] {
        match self {
            Dir::North => [Dir::North, Dir::East, Dir::West],
            Dir::East => [Dir::East, Dir::South, Dir::North],
            Dir::South => [Dir::South, Dir::West, Dir::East],
            Dir::West => [Dir::West, Dir::North, Dir::South],
        }
    }
}

/// One simulated vehicle.
#[derive(Clone, Debug)]
struct Vehicle {
    id: DeviceId,
    /// The crossing it last passed, in blocks from the centre.
    at: (i32, i32),
    dir: Dir,
    /// Metres driven past `at`.
    progress_m: f64,
    speed_mps: f64,
    battery: f64,
}

impl Vehicle {
    fn new(index: usize, rng: &mut impl Rng) -> Vehicle {
        let at = (
            rng.random_range(-REACH_BLOCKS..=REACH_BLOCKS),
            rng.random_range(-REACH_BLOCKS..=REACH_BLOCKS),
        );
        // Head along a street that stays on the grid.
        let dirs: Vec<Dir> = [Dir::North, Dir::East, Dir::South, Dir::West]
            .into_iter()
            .filter(|d| {
                let (dx, dy) = d.step();
                (at.0 + dx).abs() <= REACH_BLOCKS && (at.1 + dy).abs() <= REACH_BLOCKS
            })
            .collect();
        Vehicle {
            // A formatted `demo-NNNN` is always a valid id.
            id: DeviceId::parse(&format!("demo-{index:04}")).unwrap_or_else(|_| unreachable!()),
            at,
            dir: dirs[rng.random_range(0..dirs.len())],
            progress_m: rng.random_range(0.0..BLOCK_M),
            speed_mps: rng.random_range(4.0..16.0),
            battery: rng.random_range(40.0..100.0),
        }
    }

    /// Drives for `secs` seconds.
    fn drive(&mut self, secs: f64, rng: &mut impl Rng) {
        self.progress_m += self.speed_mps * secs;
        while self.progress_m >= BLOCK_M {
            self.progress_m -= BLOCK_M;
            let (dx, dy) = self.dir.step();
            self.at = (self.at.0 + dx, self.at.1 + dy);
            // At a crossing: mostly straight on, sometimes turn; never off the grid.
            let choices = self.dir.turns();
            let inside = |d: Dir| {
                let (dx, dy) = d.step();
                (self.at.0 + dx).abs() <= REACH_BLOCKS && (self.at.1 + dy).abs() <= REACH_BLOCKS
            };
            let wanted = if rng.random_bool(0.7) {
                choices[0]
            } else {
                choices[rng.random_range(1..3)]
            };
            self.dir = if inside(wanted) {
                wanted
            } else {
                choices
                    .into_iter()
                    .find(|d| inside(*d))
                    .unwrap_or(match self.dir {
                        Dir::North => Dir::South,
                        Dir::South => Dir::North,
                        Dir::East => Dir::West,
                        Dir::West => Dir::East,
                    })
            };
        }
        self.battery = (self.battery - secs * 0.002).max(5.0);
    }

    /// Position in metres east and north of the centre.
    fn offset_m(&self) -> (f64, f64) {
        let (dx, dy) = self.dir.step();
        (
            self.at.0 as f64 * BLOCK_M + dx as f64 * self.progress_m,
            self.at.1 as f64 * BLOCK_M + dy as f64 * self.progress_m,
        )
    }

    fn fix(&self, center: (f64, f64), ts: i64) -> Fix {
        let (east, north) = self.offset_m();
        let lat = center.0 + north / M_PER_DEG;
        let lon = center.1 + east / (M_PER_DEG * center.0.to_radians().cos().max(0.01));
        Fix {
            lat: lat.clamp(-90.0, 90.0),
            lon: ((lon + 180.0).rem_euclid(360.0)) - 180.0,
            ts,
            acc: Some(5.0),
            alt: None,
            spd: Some(self.speed_mps),
            hdg: Some(self.dir.degrees()),
            batt: Some((self.battery * 10.0).round() / 10.0),
        }
    }
}

/// Runs `count` simulated devices around `center` (lat, lon) until `shutdown`.
pub(crate) async fn run(
    hub: Arc<Hub>,
    count: usize,
    center: (f64, f64),
    shutdown: CancellationToken,
) {
    let group = match GroupId::parse(GROUP) {
        Ok(g) => vec![g],
        Err(_) => unreachable!("'demo' is a valid group id"),
    };
    let mut rng = SmallRng::seed_from_u64(0x6265_6163_6f6e);
    let mut vehicles: Vec<Vehicle> = (0..count).map(|i| Vehicle::new(i, &mut rng)).collect();
    for v in &vehicles {
        hub.device_connected(&v.id, &group);
    }
    tracing::info!(devices = count, group = GROUP, "demo devices driving");
    let mut every = tokio::time::interval(Duration::from_secs(1));
    // Spread the reports over the second, as real devices would be.
    let slices = 10usize;
    let mut slice = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = every.tick() => {}
        }
        for part in 0..slices {
            if part > 0 {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = slice.tick() => {}
                }
            }
            let now = now_ms();
            for v in vehicles.iter_mut().skip(part).step_by(slices) {
                v.drive(1.0, &mut rng);
                hub.publish(&v.id, &group, &v.fix(center, now), now);
            }
        }
    }
    for v in &vehicles {
        hub.device_disconnected(&v.id, &group);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vehicles_move_along_streets_at_their_speed() {
        let mut rng = SmallRng::seed_from_u64(1);
        for i in 0..200 {
            let mut v = Vehicle::new(i, &mut rng);
            for _ in 0..300 {
                let before = v.offset_m();
                v.drive(1.0, &mut rng);
                let after = v.offset_m();
                // Always on a street: one coordinate is a multiple of the block length.
                let on_grid = |m: f64| (m / BLOCK_M - (m / BLOCK_M).round()).abs() < 1e-6;
                assert!(on_grid(after.0) || on_grid(after.1), "{after:?}");
                // Never further than it could drive in a second (Manhattan distance).
                let moved = (after.0 - before.0).abs() + (after.1 - before.1).abs();
                assert!(
                    moved <= v.speed_mps + 1e-6,
                    "moved {moved} at {}",
                    v.speed_mps
                );
                assert!(v.at.0.abs() <= REACH_BLOCKS && v.at.1.abs() <= REACH_BLOCKS);
            }
        }
    }

    #[test]
    fn fixes_are_valid_around_the_centre() {
        let mut rng = SmallRng::seed_from_u64(2);
        let v = Vehicle::new(0, &mut rng);
        let fix = v.fix((52.52, 13.405), 1);
        assert!((fix.lat - 52.52).abs() < 0.05 && (fix.lon - 13.405).abs() < 0.1);
    }
}
