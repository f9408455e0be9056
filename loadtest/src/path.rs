//! Plausible vehicle paths: cars driving a square street grid around a centre.
//!
//! Each simulated device is a [`Vehicle`] on a Manhattan grid of streets `block_m` apart.
//! It drives along a street at its own cruise speed, and at every intersection goes straight
//! or turns left or right (never off the grid), varying its speed a little. Reported heading
//! is the direction of travel and reported speed the speed used to move, so consecutive fixes
//! are consistent with each other, as a real fleet's would be.
//!
//! Positions are kept as an intersection plus the distance travelled past it, so a vehicle
//! always lies exactly on a street however long it drives.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::config::Center;

/// Metres per degree of latitude (and of longitude at the equator).
const METRES_PER_DEGREE: f64 = 111_320.0;

/// The street grid.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Grid {
    /// Grid centre (intersection 0,0).
    pub center: Center,
    /// Distance between parallel streets, in metres.
    pub block_m: f64,
    /// Intersections run from `-half_blocks` to `half_blocks` on both axes.
    pub half_blocks: i32,
}

impl Grid {
    /// A city-sized grid: 120 m blocks, 3.6 km from the centre to the edge.
    pub(crate) fn city(center: Center) -> Grid {
        Grid {
            center,
            block_m: 120.0,
            half_blocks: 30,
        }
    }

    /// Converts metres east/north of the centre into latitude and longitude.
    pub(crate) fn to_lat_lon(self, east_m: f64, north_m: f64) -> (f64, f64) {
        let lat = self.center.lat + north_m / METRES_PER_DEGREE;
        let lon =
            self.center.lon + east_m / (METRES_PER_DEGREE * self.center.lat.to_radians().cos());
        (lat, lon)
    }

    fn contains(&self, ix: i32, iy: i32) -> bool {
        ix.abs() <= self.half_blocks && iy.abs() <= self.half_blocks
    }
}

/// A direction of travel along the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    /// North, heading 0°.
    North,
    /// East, heading 90°.
    East,
    /// South, heading 180°.
    South,
    /// West, heading 270°.
    West,
}

impl Dir {
    const ALL: [Dir; 4] = [Dir::North, Dir::East, Dir::South, Dir::West];

    /// Unit step in intersections (east, north).
    pub(crate) fn step(self) -> (i32, i32) {
        match self {
            Dir::North => (0, 1),
            Dir::East => (1, 0),
            Dir::South => (0, -1),
            Dir::West => (-1, 0),
        }
    }

    /// Compass heading in degrees.
    pub(crate) fn heading(self) -> f64 {
        match self {
            Dir::North => 0.0,
            Dir::East => 90.0,
            Dir::South => 180.0,
            Dir::West => 270.0,
        }
    }

    fn right(self) -> Dir {
        match self {
            Dir::North => Dir::East,
            Dir::East => Dir::South,
            Dir::South => Dir::West,
            Dir::West => Dir::North,
        }
    }

    fn left(self) -> Dir {
        self.right().right().right()
    }

    fn reverse(self) -> Dir {
        self.right().right()
    }
}

/// One reported fix.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Fix {
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// Speed in m/s.
    pub spd: f64,
    /// Heading in degrees, 0-360.
    pub hdg: f64,
    /// Horizontal accuracy in metres.
    pub acc: f64,
}

/// A car on the grid.
#[derive(Debug, Clone)]
pub(crate) struct Vehicle {
    grid: Grid,
    /// Intersection last passed.
    ix: i32,
    iy: i32,
    dir: Dir,
    /// Metres driven past (ix, iy) towards the next intersection, in [0, block_m).
    progress_m: f64,
    /// Current speed, m/s.
    speed: f64,
    /// This driver's usual speed, m/s.
    cruise: f64,
    rng: SmallRng,
}

/// Slowest and fastest speeds a vehicle drives at, m/s (about 7 and 58 km/h).
pub(crate) const SPEED_RANGE: (f64, f64) = (2.0, 16.0);

impl Vehicle {
    /// A vehicle at a random point of the grid; the same seed gives the same path.
    pub(crate) fn new(grid: Grid, seed: u64) -> Vehicle {
        let mut rng = SmallRng::seed_from_u64(seed);
        let n = grid.half_blocks;
        let ix = rng.random_range(-n..=n);
        let iy = rng.random_range(-n..=n);
        let cruise = rng.random_range(6.0..12.0);
        let mut v = Vehicle {
            grid,
            ix,
            iy,
            dir: Dir::North,
            progress_m: 0.0,
            speed: cruise,
            cruise,
            rng,
        };
        let initial = Dir::ALL[v.rng.random_range(0..4)];
        v.dir = v.pick_direction(initial);
        v.progress_m = v.rng.random_range(0.0..grid.block_m);
        v
    }

    /// Drives for `dt_s` seconds, turning at intersections on the way.
    pub(crate) fn advance(&mut self, dt_s: f64) {
        let mut remaining = (self.speed * dt_s.max(0.0)).max(0.0);
        // Bounded: one iteration per intersection passed (a handful even for long gaps).
        for _ in 0..10_000 {
            let to_next = self.grid.block_m - self.progress_m;
            if remaining < to_next {
                self.progress_m += remaining;
                return;
            }
            remaining -= to_next;
            let (dx, dy) = self.dir.step();
            self.ix += dx;
            self.iy += dy;
            self.progress_m = 0.0;
            self.dir = self.pick_direction(self.dir);
            let jitter: f64 = self.rng.random_range(0.8..1.2);
            self.speed = (self.cruise * jitter).clamp(SPEED_RANGE.0, SPEED_RANGE.1);
        }
    }

    /// Straight ahead most of the time, otherwise left or right; a U-turn only at a corner
    /// with no other way that stays on the grid.
    fn pick_direction(&mut self, current: Dir) -> Dir {
        let roll: f64 = self.rng.random_range(0.0..1.0);
        let preferred = if roll < 0.6 {
            [current, current.left(), current.right()]
        } else if roll < 0.8 {
            [current.left(), current.right(), current]
        } else {
            [current.right(), current.left(), current]
        };
        preferred
            .into_iter()
            .chain(std::iter::once(current.reverse()))
            .find(|d| {
                let (dx, dy) = d.step();
                self.grid.contains(self.ix + dx, self.iy + dy)
            })
            .unwrap_or(current.reverse())
    }

    /// Position in metres east and north of the centre.
    pub(crate) fn position_m(&self) -> (f64, f64) {
        let (dx, dy) = self.dir.step();
        let b = self.grid.block_m;
        (
            f64::from(self.ix) * b + f64::from(dx) * self.progress_m,
            f64::from(self.iy) * b + f64::from(dy) * self.progress_m,
        )
    }

    /// The fix a GPS receiver in this car would report now.
    pub(crate) fn fix(&self) -> Fix {
        let (east, north) = self.position_m();
        let (lat, lon) = self.grid.to_lat_lon(east, north);
        Fix {
            lat,
            lon,
            spd: self.speed,
            hdg: self.dir.heading(),
            acc: 5.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> Grid {
        Grid::city(Center {
            lat: 52.52,
            lon: 13.405,
        })
    }

    fn on_a_street(g: &Grid, (x, y): (f64, f64)) -> bool {
        let off = |v: f64| (v / g.block_m - (v / g.block_m).round()).abs() < 1e-9;
        off(x) || off(y)
    }

    #[test]
    fn stays_on_streets_inside_the_grid() {
        let g = grid();
        let limit = f64::from(g.half_blocks) * g.block_m + 1e-6;
        for seed in 0..50 {
            let mut v = Vehicle::new(g, seed);
            for _ in 0..2_000 {
                v.advance(1.0);
                let (x, y) = v.position_m();
                assert!(
                    x.abs() <= limit && y.abs() <= limit,
                    "left the grid: {x},{y}"
                );
                assert!(on_a_street(&g, (x, y)), "off-street at {x},{y}");
            }
        }
    }

    #[test]
    fn motion_matches_speed_and_heading() {
        let g = grid();
        for seed in 0..50 {
            let mut v = Vehicle::new(g, seed);
            for _ in 0..500 {
                let before = v.position_m();
                let fix = v.fix();
                let dt = 0.5;
                v.advance(dt);
                let after = v.position_m();
                let (dx, dy) = (after.0 - before.0, after.1 - before.1);
                // Along streets the distance driven is the Manhattan distance: exactly the
                // reported speed × dt, or less if the car made a U-turn at a corner.
                let driven = dx.abs() + dy.abs();
                let reversed = v.dir
                    == Dir::ALL
                        .into_iter()
                        .find(|d| d.heading() == fix.hdg)
                        .unwrap()
                        .reverse();
                if !reversed {
                    assert!(
                        (driven - fix.spd * dt).abs() < 1e-6,
                        "drove {driven} at {} m/s",
                        fix.spd
                    );
                }
                assert!(driven <= fix.spd * dt + 1e-6, "too fast: {driven}");
                if v.dir.heading() == fix.hdg && driven > 1e-9 {
                    // No turn during the step: displacement points along the reported heading
                    // and its length is exactly speed × dt.
                    let bearing = dx.atan2(dy).to_degrees().rem_euclid(360.0);
                    assert!(
                        (bearing - fix.hdg).abs() < 1e-6,
                        "bearing {bearing} vs heading {}",
                        fix.hdg
                    );
                }
                assert!((SPEED_RANGE.0..=SPEED_RANGE.1).contains(&fix.spd));
                assert!((0.0..360.0).contains(&fix.hdg));
            }
        }
    }

    #[test]
    fn vehicles_actually_move_and_turn() {
        let mut v = Vehicle::new(grid(), 7);
        let start = v.position_m();
        let mut headings = std::collections::BTreeSet::new();
        for _ in 0..600 {
            v.advance(1.0);
            headings.insert(v.fix().hdg as u32);
        }
        let end = v.position_m();
        assert!((end.0 - start.0).abs() + (end.1 - start.1).abs() > 100.0);
        assert!(headings.len() >= 3, "never turned: {headings:?}");
    }

    #[test]
    fn same_seed_same_path() {
        let (mut a, mut b) = (Vehicle::new(grid(), 42), Vehicle::new(grid(), 42));
        for _ in 0..100 {
            a.advance(0.7);
            b.advance(0.7);
        }
        assert_eq!(a.fix(), b.fix());
        assert_ne!(Vehicle::new(grid(), 1).fix(), Vehicle::new(grid(), 2).fix());
    }

    #[test]
    fn fixes_are_valid_coordinates_near_the_centre() {
        let g = grid();
        let v = Vehicle::new(g, 3);
        let f = v.fix();
        assert!((f.lat - g.center.lat).abs() < 0.05);
        assert!((f.lon - g.center.lon).abs() < 0.1);
        let (lat, lon) = g.to_lat_lon(0.0, METRES_PER_DEGREE);
        assert!((lat - g.center.lat - 1.0).abs() < 1e-12 && (lon - g.center.lon).abs() < 1e-12);
    }
}
