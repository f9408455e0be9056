//! A fence's shape: a circle or a GeoJSON polygon, validated, and the signed distance of a
//! point to its boundary in metres (negative inside).
//!
//! Polygons are judged in a local plane: the vertices are projected once, when the fence is
//! made, onto an equirectangular plane centred on the polygon (x east, y north, in metres), and
//! every fix is projected the same way before `geo` tests containment and measures the distance
//! to the rings. Over the largest polygon allowed ([`MAX_POLYGON_SPAN_M`] across) the error of
//! that projection stays well under one per cent of a distance, far below GPS noise. Circles
//! use the haversine distance to the centre. No I/O here.

use geo::{
    BoundingRect, Contains, Coord, Distance, Euclidean, Haversine, LineString, Point, Polygon,
    Validation,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Mean Earth radius used for the local plane, metres (the one `geo`'s haversine uses).
const EARTH_RADIUS_M: f64 = 6_371_008.8;

/// Smallest circle radius accepted, metres: below GPS accuracy a fence cannot work.
pub(crate) const MIN_RADIUS_M: f64 = 1.0;

/// Largest extent of a polygon, metres across its bounding box (either way): beyond it the
/// local plane would distort distances, and a fence that large is a region, not a fence.
pub(crate) const MAX_POLYGON_SPAN_M: f64 = 500_000.0;

/// Smallest polygon area accepted, square metres: a zero-area ring is degenerate.
pub(crate) const MIN_POLYGON_AREA_M2: f64 = 1.0;

/// Most rings (the outer ring and its holes) of one polygon.
pub(crate) const MAX_RINGS: usize = 16;

/// Bounds a shape is checked against (from the configuration).
#[derive(Clone, Copy, Debug)]
pub(crate) struct ShapeBounds {
    /// Most vertices of a polygon, all rings together.
    pub(crate) max_vertices: usize,
    /// Largest circle radius, metres.
    pub(crate) max_radius_m: f64,
}

/// A validated shape.
#[derive(Clone, Debug)]
pub(crate) enum Shape {
    /// A circle around `center`.
    Circle {
        /// `(lon, lat)` degrees.
        center: Point<f64>,
        /// Metres.
        radius_m: f64,
    },
    /// A polygon, kept projected onto its local plane.
    Polygon(Box<PlanePolygon>),
}

/// A polygon on its local plane.
#[derive(Clone, Debug)]
pub(crate) struct PlanePolygon {
    /// Where the plane is centred, degrees.
    origin_lat: f64,
    origin_lon: f64,
    /// `cos(origin_lat)`, the east-west scale.
    cos_lat: f64,
    /// The polygon in plane metres.
    plane: Polygon<f64>,
    /// Bounding box in degrees: `(min_lon, min_lat, max_lon, max_lat)`.
    bbox: (f64, f64, f64, f64),
}

/// The geometry as it travels in JSON: GeoJSON `Polygon` or the protocol's `Circle`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
pub(crate) enum GeometryBody {
    /// `{"type": "Polygon", "coordinates": [[[lon, lat], ...], ...]}`.
    Polygon {
        /// Rings of `[lon, lat]` positions, the outer one first.
        coordinates: Vec<Vec<Vec<f64>>>,
    },
    /// `{"type": "Circle", "center": [lon, lat], "radius_m": R}`.
    Circle {
        /// `[lon, lat]`.
        center: Vec<f64>,
        /// Metres.
        radius_m: f64,
    },
}

/// Why a geometry was refused; the message names the problem.
#[derive(Debug, thiserror::Error, PartialEq)]
pub(crate) enum ShapeError {
    /// Any problem, in words.
    #[error("geometry: {0}")]
    Invalid(String),
}

fn invalid(message: impl Into<String>) -> ShapeError {
    ShapeError::Invalid(message.into())
}

/// A `[lon, lat]` position, checked.
fn position(p: &[f64], what: &str) -> Result<Coord<f64>, ShapeError> {
    let [lon, lat] = p else {
        return Err(invalid(format!(
            "{what} must be [lon, lat] (two numbers), got {} numbers",
            p.len()
        )));
    };
    if !lon.is_finite() || !(-180.0..=180.0).contains(lon) {
        return Err(invalid(format!("{what}: lon {lon} is outside [-180, 180]")));
    }
    if !lat.is_finite() || !(-90.0..=90.0).contains(lat) {
        return Err(invalid(format!("{what}: lat {lat} is outside [-90, 90]")));
    }
    Ok(Coord { x: *lon, y: *lat })
}

impl Shape {
    /// Validates `body` against `bounds`.
    pub(crate) fn from_body(body: &GeometryBody, bounds: ShapeBounds) -> Result<Shape, ShapeError> {
        match body {
            GeometryBody::Circle { center, radius_m } => {
                let center = position(center, "center")?;
                if !radius_m.is_finite()
                    || *radius_m < MIN_RADIUS_M
                    || *radius_m > bounds.max_radius_m
                {
                    return Err(invalid(format!(
                        "radius_m must be from {MIN_RADIUS_M} to {} metres",
                        bounds.max_radius_m
                    )));
                }
                Ok(Shape::Circle {
                    center: Point::from(center),
                    radius_m: *radius_m,
                })
            }
            GeometryBody::Polygon { coordinates } => {
                Ok(Shape::Polygon(Box::new(polygon(coordinates, bounds)?)))
            }
        }
    }

    /// Signed distance from `(lat, lon)` to the boundary, metres: negative or zero inside,
    /// positive outside. `None` when the point is certainly farther outside than `margin_m`
    /// (a bounding-box test, no exact distance computed): the common case, kept cheap.
    pub(crate) fn distance_m(&self, lat: f64, lon: f64, margin_m: f64) -> Option<f64> {
        match self {
            Shape::Circle { center, radius_m } => {
                let d = Haversine.distance(*center, Point::new(lon, lat)) - radius_m;
                (d <= margin_m).then_some(d)
            }
            Shape::Polygon(p) => p.distance_m(lat, lon, margin_m),
        }
    }
}

impl Shape {
    /// A box `[min_lon, min_lat, max_lon, max_lat]` in degrees holding every point whose
    /// [`Shape::distance_m`] may be at most `margin_m`: the spatial index's entry for the shape.
    /// Generous by one per cent and a metre; the whole longitude range when the box would reach
    /// a pole or cross the antimeridian (more candidates, never a missed one).
    pub(crate) fn grown_box(&self, margin_m: f64) -> [f64; 4] {
        // Metres per degree of latitude (and of longitude at the equator).
        let k = EARTH_RADIUS_M.to_radians();
        let grow_m = margin_m.max(0.0) * 1.01 + 1.0;
        let (min_lon, min_lat, max_lon, max_lat, cos_lat) = match self {
            Shape::Circle { center, radius_m } => {
                let dlat = (radius_m + grow_m) / k;
                let (min_lat, max_lat) = (center.y() - dlat, center.y() + dlat);
                // The box's poleward edge has the smallest metres per degree of longitude.
                let poleward = min_lat.abs().max(max_lat.abs());
                let cos_lat = poleward.min(90.0).to_radians().cos();
                let dlon = dlat / cos_lat.max(1e-9);
                let (x, _) = center.x_y();
                (x - dlon, min_lat, x + dlon, max_lat, cos_lat)
            }
            Shape::Polygon(p) => {
                let (min_lon, min_lat, max_lon, max_lat) = p.bbox;
                let dlat = grow_m / k;
                // The polygon is judged on a plane scaled by the cosine of its centre latitude.
                let dlon = dlat / p.cos_lat;
                (
                    min_lon - dlon,
                    min_lat - dlat,
                    max_lon + dlon,
                    max_lat + dlat,
                    p.cos_lat,
                )
            }
        };
        let (min_lat, max_lat) = (min_lat.max(-90.0), max_lat.min(90.0));
        if cos_lat < 0.01
            || min_lon < -180.0
            || max_lon > 180.0
            || max_lat >= 90.0
            || min_lat <= -90.0
        {
            return [-180.0, min_lat, 180.0, max_lat];
        }
        [min_lon, min_lat, max_lon, max_lat]
    }
}

impl PlanePolygon {
    fn project(&self, lat: f64, lon: f64) -> Coord<f64> {
        // Metres per degree along a great circle.
        let k = EARTH_RADIUS_M.to_radians();
        Coord {
            x: (lon - self.origin_lon) * self.cos_lat * k,
            y: (lat - self.origin_lat) * k,
        }
    }

    fn distance_m(&self, lat: f64, lon: f64, margin_m: f64) -> Option<f64> {
        let (min_lon, min_lat, max_lon, max_lat) = self.bbox;
        // Degrees of latitude (and of longitude at this latitude) per metre, for the box test.
        let dlat = margin_m / 111_000.0;
        let dlon = dlat / self.cos_lat.max(0.01);
        if lat < min_lat - dlat
            || lat > max_lat + dlat
            || lon < min_lon - dlon
            || lon > max_lon + dlon
        {
            return None;
        }
        let p = Point::from(self.project(lat, lon));
        if self.plane.contains(&p) {
            let to_ring = |ring: &LineString<f64>| Euclidean.distance(&p, ring);
            let nearest = std::iter::once(self.plane.exterior())
                .chain(self.plane.interiors())
                .map(to_ring)
                .fold(f64::INFINITY, f64::min);
            Some(-nearest)
        } else {
            let d = Euclidean.distance(&p, &self.plane);
            (d <= margin_m).then_some(d)
        }
    }
}

/// Validates GeoJSON polygon rings and projects them onto their plane.
fn polygon(rings: &[Vec<Vec<f64>>], bounds: ShapeBounds) -> Result<PlanePolygon, ShapeError> {
    if rings.is_empty() {
        return Err(invalid("a Polygon needs at least its outer ring"));
    }
    if rings.len() > MAX_RINGS {
        return Err(invalid(format!(
            "a Polygon may have at most {MAX_RINGS} rings"
        )));
    }
    let vertices: usize = rings.iter().map(Vec::len).sum();
    if vertices > bounds.max_vertices {
        return Err(invalid(format!(
            "a Polygon may have at most {} positions in all, got {vertices}",
            bounds.max_vertices
        )));
    }
    let mut degree_rings = Vec::with_capacity(rings.len());
    for (i, ring) in rings.iter().enumerate() {
        let what = format!("ring {i}");
        if ring.len() < 4 {
            return Err(invalid(format!(
                "{what} needs at least 4 positions (a closed triangle), got {}",
                ring.len()
            )));
        }
        let coords = ring
            .iter()
            .enumerate()
            .map(|(j, p)| position(p, &format!("{what} position {j}")))
            .collect::<Result<Vec<_>, _>>()?;
        if coords.first() != coords.last() {
            return Err(invalid(format!(
                "{what} is not closed: its last position must equal its first"
            )));
        }
        degree_rings.push(LineString::new(coords));
    }
    let mut rings_iter = degree_rings.into_iter();
    // Not empty: checked above.
    let exterior = rings_iter.next().unwrap_or_else(|| LineString::new(vec![]));
    let degrees = Polygon::new(exterior, rings_iter.collect());
    let rect = degrees
        .bounding_rect()
        .ok_or_else(|| invalid("a Polygon needs positions"))?;
    if rect.width() > 180.0 {
        return Err(invalid("a Polygon must not cross the antimeridian"));
    }
    let origin_lat = (rect.min().y + rect.max().y) / 2.0;
    let origin_lon = (rect.min().x + rect.max().x) / 2.0;
    let mut plane = PlanePolygon {
        origin_lat,
        origin_lon,
        cos_lat: origin_lat.to_radians().cos().max(1e-6),
        plane: Polygon::new(LineString::new(vec![]), vec![]),
        bbox: (rect.min().x, rect.min().y, rect.max().x, rect.max().y),
    };
    let project_ring = |ring: &LineString<f64>| {
        LineString::new(ring.coords().map(|c| plane.project(c.y, c.x)).collect())
    };
    let projected = Polygon::new(
        project_ring(degrees.exterior()),
        degrees.interiors().iter().map(project_ring).collect(),
    );
    let span = projected
        .bounding_rect()
        .map(|r| r.width().max(r.height()))
        .unwrap_or(0.0);
    if span > MAX_POLYGON_SPAN_M {
        return Err(invalid(format!(
            "a Polygon may span at most {} km",
            MAX_POLYGON_SPAN_M / 1000.0
        )));
    }
    if let Err(e) = projected.check_validation() {
        return Err(invalid(format!("the Polygon is not valid: {e}")));
    }
    let area = geo::Area::unsigned_area(&projected);
    if area < MIN_POLYGON_AREA_M2 {
        return Err(invalid("the Polygon has no area (degenerate)"));
    }
    plane.plane = projected;
    Ok(plane)
}

/// The geometry as JSON, for answers and storage.
pub(crate) fn body_json(body: &GeometryBody) -> Value {
    // Serializing numbers and vectors cannot fail.
    serde_json::to_value(body).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: ShapeBounds = ShapeBounds {
        max_vertices: 10,
        max_radius_m: 10_000.0,
    };

    fn square() -> GeometryBody {
        // About 111 m × 68 m at 52.5° N.
        GeometryBody::Polygon {
            coordinates: vec![vec![
                vec![13.0, 52.5],
                vec![13.001, 52.5],
                vec![13.001, 52.501],
                vec![13.0, 52.501],
                vec![13.0, 52.5],
            ]],
        }
    }

    #[test]
    fn polygon_distances_are_signed_metres() {
        let shape = Shape::from_body(&square(), BOUNDS).unwrap();
        let inside = shape.distance_m(52.5005, 13.0005, 0.0).unwrap();
        assert!(inside < -30.0 && inside > -40.0, "{inside}");
        // 0.0005° of latitude north of the top edge: about 55.6 m outside.
        let outside = shape.distance_m(52.5015, 13.0005, 100.0).unwrap();
        assert!((outside - 55.6).abs() < 1.0, "{outside}");
        assert_eq!(shape.distance_m(52.5015, 13.0005, 10.0), None);
        assert_eq!(shape.distance_m(10.0, 10.0, 1000.0), None);
    }

    #[test]
    fn a_hole_is_outside() {
        let mut rings = match square() {
            GeometryBody::Polygon { coordinates } => coordinates,
            GeometryBody::Circle { .. } => unreachable!(),
        };
        rings.push(vec![
            vec![13.0004, 52.5004],
            vec![13.0006, 52.5004],
            vec![13.0006, 52.5006],
            vec![13.0004, 52.5006],
            vec![13.0004, 52.5004],
        ]);
        let shape =
            Shape::from_body(&GeometryBody::Polygon { coordinates: rings }, BOUNDS).unwrap();
        let centre = shape.distance_m(52.5005, 13.0005, 100.0).unwrap();
        assert!(centre > 5.0 && centre < 8.0, "{centre}");
        assert!(shape.distance_m(52.5002, 13.0002, 0.0).unwrap() < 0.0);
    }

    #[test]
    fn circle_distances_are_signed_metres() {
        let shape = Shape::from_body(
            &GeometryBody::Circle {
                center: vec![13.0, 52.5],
                radius_m: 100.0,
            },
            BOUNDS,
        )
        .unwrap();
        assert!((shape.distance_m(52.5, 13.0, 0.0).unwrap() + 100.0).abs() < 1e-6);
        let d = shape.distance_m(52.5018, 13.0, 200.0).unwrap();
        assert!((d - 100.1).abs() < 1.0, "{d}");
    }

    #[test]
    fn bad_geometry_is_named() {
        let err = |body: GeometryBody| Shape::from_body(&body, BOUNDS).unwrap_err().to_string();
        let ring = |r: Vec<Vec<f64>>| GeometryBody::Polygon {
            coordinates: vec![r],
        };
        assert!(
            err(ring(vec![
                vec![0.0, 0.0],
                vec![0.001, 0.0],
                vec![0.001, 0.001],
                vec![0.0, 0.002]
            ]))
            .contains("not closed")
        );
        assert!(
            err(ring(vec![vec![0.0, 0.0], vec![1.0, 0.0], vec![0.0, 0.0]])).contains("at least 4")
        );
        assert!(
            err(ring(vec![
                vec![0.0, 0.0],
                vec![0.001, 0.0],
                vec![0.002, 0.0],
                vec![0.0, 0.0]
            ]))
            .contains("degenerate")
        );
        assert!(
            err(ring(vec![
                vec![0.0, 0.0],
                vec![181.0, 0.0],
                vec![0.0, 1.0],
                vec![0.0, 0.0]
            ]))
            .contains("lon 181")
        );
        assert!(err(ring(vec![vec![0.0, 0.0]; 11])).contains("at most 10"));
        // A bow tie crosses itself.
        assert!(
            err(ring(vec![
                vec![0.0, 0.0],
                vec![0.001, 0.001],
                vec![0.001, 0.0],
                vec![0.0, 0.001],
                vec![0.0, 0.0]
            ]))
            .contains("valid")
        );
        let circle = |radius_m| GeometryBody::Circle {
            center: vec![0.0, 0.0],
            radius_m,
        };
        assert!(err(circle(0.5)).contains("radius_m"));
        assert!(err(circle(20_000.0)).contains("radius_m"));
        assert!(err(circle(f64::NAN)).contains("radius_m"));
        assert!(
            Shape::from_body(
                &GeometryBody::Circle {
                    center: vec![0.0, 91.0],
                    radius_m: 10.0
                },
                BOUNDS
            )
            .is_err()
        );
    }
}
