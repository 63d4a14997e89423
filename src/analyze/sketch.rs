//! Bounded-memory summaries of a stream of samples: a log-bucket quantile sketch and a
//! downsampled time series. Neither keeps individual samples, so memory does not grow with the
//! size of the log.

use serde::Serialize;

/// Smallest value the sketch resolves (in the sample's unit, ms in practice); smaller values,
/// zero included, land in the first bucket.
const SKETCH_MIN: f64 = 1e-3;
/// Bucket growth factor: every bucket spans 2 % of its lower edge, so a quantile is within 1 %.
const SKETCH_GROWTH: f64 = 1.02;
/// Buckets: 1e-3 × 1.02^1400 ≈ 1e9, enough for durations up to ~11 days in ms.
const SKETCH_BUCKETS: usize = 1400;

/// A streaming quantile sketch over non-negative samples: fixed log-spaced buckets (relative
/// error ≤ 1 %) plus exact count, sum, min and max.
#[derive(Debug, Clone)]
pub struct Sketch {
    buckets: Vec<u64>,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Default for Sketch {
    fn default() -> Self {
        Self {
            buckets: vec![0; SKETCH_BUCKETS],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

/// Summary of a distribution as reported: all `None` when there were no samples.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Dist {
    pub count: u64,
    pub mean: Option<f64>,
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub max: Option<f64>,
}

fn bucket_of(value: f64) -> usize {
    if value <= SKETCH_MIN {
        return 0;
    }
    let index = ((value / SKETCH_MIN).ln() / SKETCH_GROWTH.ln()).floor() as usize + 1;
    index.min(SKETCH_BUCKETS - 1)
}

/// Representative value of a bucket: the geometric middle of its edges.
fn bucket_value(index: usize) -> f64 {
    if index == 0 {
        return SKETCH_MIN;
    }
    SKETCH_MIN * SKETCH_GROWTH.powf(index as f64 - 0.5)
}

impl Sketch {
    /// Adds one sample; negative and non-finite samples are ignored.
    pub fn add(&mut self, value: f64) {
        if !value.is_finite() || value < 0.0 {
            return;
        }
        self.buckets[bucket_of(value)] += 1;
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Number of samples.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean, or `None` without samples.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    /// Largest sample, or `None` without samples.
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// The `q` quantile (0 ≤ q ≤ 1), clamped to the exact min and max.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(bucket_value(index).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    /// Count, mean, p50, p95 and max.
    pub fn dist(&self) -> Dist {
        Dist {
            count: self.count,
            mean: self.mean(),
            p50: self.quantile(0.5),
            p95: self.quantile(0.95),
            max: self.max(),
        }
    }

    /// Sample counts between consecutive `edges` (ascending); the last bin also takes
    /// everything above the last edge, the first everything below the first.
    pub fn histogram(&self, edges: &[f64]) -> Vec<u64> {
        let bins = edges.len().saturating_sub(1).max(1);
        let mut counts = vec![0; bins];
        for (index, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            let value = bucket_value(index).clamp(self.min, self.max);
            let bin = edges
                .iter()
                .skip(1)
                .position(|&edge| value < edge)
                .unwrap_or(bins - 1);
            counts[bin.min(bins - 1)] += n;
        }
        counts
    }
}

/// Most points a [`Series`] keeps; when full, neighbouring points merge two by two.
pub const SERIES_POINTS: usize = 256;

/// One point of a [`Series`]: the mean and max of the samples in a time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// Start of the bucket, in the unit of the samples' times (seconds since the epoch).
    pub t: f64,
    pub mean: f64,
    pub max: f64,
    pub count: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    sum: f64,
    max: f64,
    count: u64,
}

/// A time series downsampled into at most [`SERIES_POINTS`] equal-width time buckets: the
/// bucket width starts at one second and doubles (merging neighbours) whenever the series
/// would need more buckets. Samples before the first one go into the first bucket.
#[derive(Debug, Clone)]
pub struct Series {
    origin: Option<f64>,
    width: f64,
    buckets: Vec<Option<Bucket>>,
}

impl Default for Series {
    fn default() -> Self {
        Self {
            origin: None,
            width: 1.0,
            buckets: Vec::new(),
        }
    }
}

impl Series {
    /// Adds `value` at time `t` (seconds since the epoch).
    pub fn add(&mut self, t: f64, value: f64) {
        if !t.is_finite() || !value.is_finite() {
            return;
        }
        let origin = *self.origin.get_or_insert(t);
        let offset = (t - origin).max(0.0);
        let mut index = (offset / self.width) as usize;
        while index >= SERIES_POINTS {
            self.halve();
            index = (offset / self.width) as usize;
        }
        if self.buckets.len() <= index {
            self.buckets.resize(index + 1, None);
        }
        let bucket = self.buckets[index].get_or_insert(Bucket {
            sum: 0.0,
            max: f64::NEG_INFINITY,
            count: 0,
        });
        bucket.sum += value;
        bucket.max = bucket.max.max(value);
        bucket.count += 1;
    }

    fn halve(&mut self) {
        self.width *= 2.0;
        let merged = self
            .buckets
            .chunks(2)
            .map(|pair| {
                pair.iter().flatten().fold(None, |acc: Option<Bucket>, b| {
                    Some(match acc {
                        None => *b,
                        Some(a) => Bucket {
                            sum: a.sum + b.sum,
                            max: a.max.max(b.max),
                            count: a.count + b.count,
                        },
                    })
                })
            })
            .collect();
        self.buckets = merged;
    }

    /// The non-empty buckets in time order.
    pub fn points(&self) -> Vec<Point> {
        let origin = self.origin.unwrap_or(0.0);
        self.buckets
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                b.map(|b| Point {
                    t: origin + i as f64 * self.width,
                    mean: b.sum / b.count as f64,
                    max: b.max,
                    count: b.count,
                })
            })
            .collect()
    }

    /// [`Series::points`] as a report's points, timed from `origin` (the report's first record).
    pub fn report_points(&self, origin: f64) -> Vec<super::model::SeriesPoint> {
        self.points()
            .into_iter()
            .map(|p| super::model::SeriesPoint {
                t_s: p.t - origin,
                mean: p.mean,
                max: p.max,
                count: p.count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_within_one_percent() {
        let mut sketch = Sketch::default();
        for i in 1..=10_000 {
            sketch.add(i as f64 / 10.0);
        }
        let p50 = sketch.quantile(0.5).unwrap();
        let p95 = sketch.quantile(0.95).unwrap();
        assert!((p50 - 500.0).abs() / 500.0 < 0.011, "{p50}");
        assert!((p95 - 950.0).abs() / 950.0 < 0.011, "{p95}");
        assert_eq!(sketch.max(), Some(1000.0));
        assert!((sketch.mean().unwrap() - 500.05).abs() < 1e-6);
    }

    #[test]
    fn empty_and_single_sample() {
        let empty = Sketch::default();
        assert_eq!(empty.dist(), Dist::default());
        let mut one = Sketch::default();
        one.add(42.0);
        let d = one.dist();
        assert_eq!(
            (d.count, d.p50, d.p95, d.max),
            (1, Some(42.0), Some(42.0), Some(42.0))
        );
    }

    #[test]
    fn zero_and_bad_samples() {
        let mut sketch = Sketch::default();
        sketch.add(0.0);
        sketch.add(f64::NAN);
        sketch.add(-1.0);
        assert_eq!(sketch.count(), 1);
        assert_eq!(sketch.quantile(0.5), Some(0.0));
    }

    #[test]
    fn histogram_bins_every_sample() {
        let mut sketch = Sketch::default();
        for v in [0.0, 0.5, 5.0, 50.0, 5000.0] {
            sketch.add(v);
        }
        assert_eq!(sketch.histogram(&[0.0, 1.0, 10.0, 100.0]), vec![2, 1, 2]);
    }

    #[test]
    fn series_stays_bounded_and_keeps_totals() {
        let mut series = Series::default();
        for i in 0..100_000 {
            series.add(1_000.0 + i as f64, 1.0);
        }
        let points = series.points();
        assert!(points.len() <= SERIES_POINTS);
        assert_eq!(points.iter().map(|p| p.count).sum::<u64>(), 100_000);
        assert!(points.windows(2).all(|w| w[0].t < w[1].t));
    }
}
