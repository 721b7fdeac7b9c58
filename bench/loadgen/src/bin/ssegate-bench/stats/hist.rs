//! HDR histograms of microseconds, their percentiles, and their form in a report.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest value a histogram holds (microseconds): one hour. Larger values are clamped.
const HIST_MAX: u64 = 3_600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX, 3).expect("valid histogram bounds")
}

pub fn record(h: &mut Histogram<u64>, v: u64) {
    h.saturating_record(v.clamp(1, HIST_MAX));
}

/// Percentiles in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Pct {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Pct {
    pub fn of(h: &Histogram<u64>) -> Pct {
        if h.is_empty() {
            return Pct::default();
        }
        Pct {
            count: h.len(),
            mean: (h.mean() * 10.0).round() / 10.0,
            p50: h.value_at_quantile(0.5),
            p90: h.value_at_quantile(0.9),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// A histogram as `[[value, count], ...]` so that reports of several processes can be merged.
pub fn hist_to_vec(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

pub fn hist_from_vec(v: &[(u64, u64)]) -> Histogram<u64> {
    let mut h = new_hist();
    for &(value, count) in v {
        let _ = h.record_n(value.clamp(1, HIST_MAX), count);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_round_trip() {
        let mut h = new_hist();
        for v in [1, 5, 100, 1000, 1000, 123_456, 5_000_000_000] {
            record(&mut h, v);
        }
        let back = hist_from_vec(&hist_to_vec(&h));
        assert_eq!(back.len(), h.len());
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(back.max(), h.max());
    }
}
