//! The random walk of the move scenario: one walker per session, a heading
//! that turns a little at every step, and edges that turn it back, so a
//! healthy server never has to clamp or disconnect a move.
//!
//! Pure arithmetic with its own small generator (splitmix64), seeded by the
//! session's number: a run's walks are the same every time.

use std::f32::consts::PI;

/// How far from the map's edges a walker stays.
const EDGE_MARGIN: f32 = 1.0;

/// Largest turn of the heading at one step, in radians (either way).
const MAX_TURN: f32 = 0.5;

/// One session's position and heading on the square map `[0, size)²`.
#[derive(Debug, Clone)]
pub struct Walker {
    x: f32,
    y: f32,
    heading: f32,
    size: f32,
    rng: u64,
}

impl Walker {
    /// A walker at the centre of a map of side `size`, heading somewhere
    /// chosen by `seed`.
    pub fn new(size: f32, seed: u64) -> Walker {
        let mut walker = Walker {
            x: size / 2.0,
            y: size / 2.0,
            heading: 0.0,
            size,
            rng: seed ^ 0x5eed_cafe_f00d_d00d,
        };
        walker.heading = walker.uniform() * 2.0 * PI;
        walker
    }

    /// Puts the walker at `(x, y)` (where the server says it is), kept
    /// inside the margins.
    pub fn place(&mut self, x: f32, y: f32) {
        self.x = self.inside(x);
        self.y = self.inside(y);
    }

    /// The position now.
    #[cfg(test)]
    pub fn position(&self) -> (f32, f32) {
        (self.x, self.y)
    }

    /// Walks `distance` units: turns the heading by a random amount, moves,
    /// and bounces off the edges. Returns the new position and the heading
    /// as a yaw in degrees `[0, 360)`.
    pub fn step(&mut self, distance: f32) -> (f32, f32, f32) {
        self.heading += (self.uniform() * 2.0 - 1.0) * MAX_TURN;
        let (low, high) = (EDGE_MARGIN, (self.size - EDGE_MARGIN).max(EDGE_MARGIN));
        let mut x = self.x + distance * self.heading.cos();
        let mut y = self.y + distance * self.heading.sin();
        if x < low || x > high {
            // Reflect off a vertical edge: the x component turns round.
            self.heading = PI - self.heading;
            x = reflect(x, low, high);
        }
        if y < low || y > high {
            self.heading = -self.heading;
            y = reflect(y, low, high);
        }
        self.heading = self.heading.rem_euclid(2.0 * PI);
        self.x = x.clamp(low, high);
        self.y = y.clamp(low, high);
        (self.x, self.y, self.heading.to_degrees().rem_euclid(360.0))
    }

    fn inside(&self, v: f32) -> f32 {
        v.clamp(EDGE_MARGIN, (self.size - EDGE_MARGIN).max(EDGE_MARGIN))
    }

    /// A uniform number in `[0, 1)` (splitmix64).
    fn uniform(&mut self) -> f32 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// `v` mirrored back into `[low, high]` across the edge it crossed.
fn reflect(v: f32, low: f32, high: f32) -> f32 {
    if v < low {
        low + (low - v)
    } else if v > high {
        high - (v - high)
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_have_the_asked_length_and_stay_on_the_map() {
        let size = 200.0;
        let mut walker = Walker::new(size, 7);
        let mut previous = walker.position();
        for _ in 0..10_000 {
            let (x, y, yaw) = walker.step(15.0);
            assert!((EDGE_MARGIN..=size - EDGE_MARGIN).contains(&x), "x {x}");
            assert!((EDGE_MARGIN..=size - EDGE_MARGIN).contains(&y), "y {y}");
            assert!((0.0..360.0).contains(&yaw), "yaw {yaw}");
            let (dx, dy) = (x - previous.0, y - previous.1);
            // A bounce folds the step, so it can only get shorter.
            assert!((dx * dx + dy * dy).sqrt() <= 15.0 + 1e-3);
            previous = (x, y);
        }
    }

    #[test]
    fn walks_are_reproducible_and_differ_by_seed() {
        let walk = |seed| {
            let mut walker = Walker::new(2000.0, seed);
            (0..100).map(|_| walker.step(15.0)).last().unwrap()
        };
        assert_eq!(walk(1), walk(1));
        assert_ne!(walk(1), walk(2));
    }

    #[test]
    fn place_keeps_the_walker_inside() {
        let mut walker = Walker::new(100.0, 3);
        walker.place(-5.0, 1e9);
        assert_eq!(walker.position(), (EDGE_MARGIN, 100.0 - EDGE_MARGIN));
        walker.place(40.0, 60.0);
        assert_eq!(walker.position(), (40.0, 60.0));
    }
}
