//! The node's recent traffic, for the status page's chart and rates: a fixed ring of samples
//! of its own counters (requests admitted and rejected, per limit tokens taken and
//! rejections, the Redis sync's round trips), one every [`SAMPLE_EVERY`], the last
//! [`SAMPLES`] kept. A background task takes the samples; nothing on the request path does
//! anything for it. Only counters whose labels are route and limit names are read: no client
//! value is ever in a sample.

use crate::app::metrics::Metrics;
use parking_lot::Mutex;
use pingora::server::ShutdownWatch;
use prometheus::core::Collector;
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a sample is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// How many samples are kept (ten minutes at one every two seconds).
pub const SAMPLES: usize = 300;

/// The window of the per-limit rates: the last five samples (about ten seconds).
const RATE_SAMPLES: usize = 5;

/// `requests_total` outcomes counted as admitted (forwarded; a shadow rejection is forwarded).
const ADMITTED: [&str; 2] = ["allowed", "shadow_limited"];
/// `requests_total` outcomes counted as rejected by a limit (429, or 403 for a denied key).
const REJECTED: [&str; 2] = ["limited", "denied"];

/// The counters as one sample reads them: totals since the node started.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    /// Requests admitted (`requests_total` with outcome allowed or shadow_limited).
    pub admitted: u64,
    /// Requests rejected (outcome limited or denied).
    pub rejected: u64,
    /// Per limit name: (tokens taken, rejections) (`tokens_consumed_total`,
    /// `rate_limited_total` summed over routes).
    pub limits: HashMap<String, (u64, u64)>,
    /// The Redis sync's round trips: (count, seconds in all).
    pub sync_rounds: (u64, f64),
}

#[derive(Debug, Clone)]
struct Sample {
    /// Since the history was made (monotonic).
    at: Duration,
    totals: Totals,
}

/// One point of the chart: the rates between a sample and the one before it.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// When the later sample was taken (Unix ms).
    pub at_ms: u64,
    pub admitted_per_second: f64,
    pub rejected_per_second: f64,
}

/// Rates of one limit over the last few samples.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LimitRates {
    pub tokens_per_second: f64,
    pub rejected_per_second: f64,
}

/// The ring of samples, and when the node started.
#[derive(Debug)]
pub struct History {
    started: Instant,
    started_ms: u64,
    ring: Mutex<VecDeque<Sample>>,
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// Now, as Unix milliseconds (0 if the host clock is before 1970).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn per_second(later: u64, earlier: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    // A counter that went down (a series removed on reload) counts as no traffic.
    later.saturating_sub(earlier) as f64 / secs
}

impl History {
    /// An empty history; the node's start is now.
    pub fn new() -> History {
        History {
            started: Instant::now(),
            started_ms: unix_ms(SystemTime::now()),
            ring: Mutex::new(VecDeque::with_capacity(SAMPLES)),
        }
    }

    /// When the node started (Unix ms).
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// How long the node has run.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Keeps `totals` as the sample taken `at` after the start, dropping the oldest sample
    /// when the ring is full.
    pub fn record(&self, at: Duration, totals: Totals) {
        let mut ring = self.ring.lock();
        if ring.len() == SAMPLES {
            ring.pop_front();
        }
        ring.push_back(Sample { at, totals });
    }

    /// Reads the node's counters and records them as a sample taken now.
    pub fn sample(&self, metrics: &Metrics) {
        self.record(self.started.elapsed(), totals_of(metrics));
    }

    /// Samples every [`SAMPLE_EVERY`] until shutdown (the node's background task).
    pub async fn run(&self, metrics: &Metrics, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(SAMPLE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = tick.tick() => self.sample(metrics),
            }
        }
    }

    /// The chart: admitted and rejected per second between each pair of samples, oldest
    /// first (one point fewer than the samples).
    pub fn points(&self) -> Vec<Point> {
        let ring = self.ring.lock();
        let pairs = ring.iter().zip(ring.iter().skip(1));
        pairs
            .map(|(a, b)| {
                let secs = b.at.saturating_sub(a.at).as_secs_f64();
                Point {
                    at_ms: self.at_ms(b.at),
                    admitted_per_second: per_second(b.totals.admitted, a.totals.admitted, secs),
                    rejected_per_second: per_second(b.totals.rejected, a.totals.rejected, secs),
                }
            })
            .collect()
    }

    /// Per limit name: tokens taken and rejections per second over the last
    /// [`RATE_SAMPLES`] samples (empty before two samples).
    pub fn limit_rates(&self) -> HashMap<String, LimitRates> {
        let ring = self.ring.lock();
        window(&ring).map_or_else(HashMap::new, |(a, b)| rates_between(a, b))
    }

    /// The mean round trip of the Redis sync over the last [`RATE_SAMPLES`] samples (`None`
    /// when no round finished in that time).
    pub fn recent_sync_seconds(&self) -> Option<f64> {
        let ring = self.ring.lock();
        let (first, last) = window(&ring)?;
        let (n1, s1) = last.totals.sync_rounds;
        let (n0, s0) = first.totals.sync_rounds;
        (n1 > n0).then(|| (s1 - s0).max(0.0) / (n1 - n0) as f64)
    }

    fn at_ms(&self, at: Duration) -> u64 {
        let ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX);
        self.started_ms.saturating_add(ms)
    }
}

/// The first and last samples of the rate window (`None` before two samples).
fn window(ring: &VecDeque<Sample>) -> Option<(&Sample, &Sample)> {
    if ring.len() < 2 {
        return None;
    }
    let first = ring.iter().rev().nth(RATE_SAMPLES).or(ring.front())?;
    Some((first, ring.back()?))
}

fn rates_between(a: &Sample, b: &Sample) -> HashMap<String, LimitRates> {
    let secs = b.at.saturating_sub(a.at).as_secs_f64();
    b.totals
        .limits
        .iter()
        .map(|(name, &(tokens, rejected))| {
            let (t0, r0) = a.totals.limits.get(name).copied().unwrap_or((0, 0));
            let rates = LimitRates {
                tokens_per_second: per_second(tokens, t0, secs),
                rejected_per_second: per_second(rejected, r0, secs),
            };
            (name.clone(), rates)
        })
        .collect()
}

/// Sums a counter family by the value of one label (`None`: every series into "").
pub fn sum_by_label(c: &dyn Collector, label: Option<&str>) -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    for family in c.collect() {
        for m in &family.metric {
            let key = label
                .and_then(|l| m.label.iter().find(|p| p.name() == l))
                .map_or("", |p| p.value());
            let v = m.counter.value().max(0.0) as u64;
            *out.entry(key.to_string()).or_default() += v;
        }
    }
    out
}

/// The counters a sample keeps.
pub fn totals_of(metrics: &Metrics) -> Totals {
    let outcomes = sum_by_label(&metrics.requests_total, Some("outcome"));
    let count = |names: &[&str]| names.iter().filter_map(|n| outcomes.get(*n)).sum();
    let tokens = sum_by_label(&metrics.tokens_consumed_total, Some("limit"));
    let rejected = sum_by_label(&metrics.rate_limited_total, Some("limit"));
    let mut limits: HashMap<String, (u64, u64)> = HashMap::new();
    for (name, n) in tokens {
        limits.entry(name).or_default().0 = n;
    }
    for (name, n) in rejected {
        limits.entry(name).or_default().1 = n;
    }
    let sync = &metrics.sync_duration_seconds;
    Totals {
        admitted: count(&ADMITTED),
        rejected: count(&REJECTED),
        limits,
        sync_rounds: (sync.get_sample_count(), sync.get_sample_sum()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(admitted: u64, rejected: u64, limit: (u64, u64)) -> Totals {
        Totals {
            admitted,
            rejected,
            limits: [("l".to_string(), limit)].into_iter().collect(),
            sync_rounds: (admitted, admitted as f64 * 0.001),
        }
    }

    #[test]
    fn points_are_rates_between_samples_and_the_ring_keeps_the_last() {
        let h = History::new();
        assert!(h.points().is_empty() && h.limit_rates().is_empty());
        for i in 0..(SAMPLES as u64 + 10) {
            // Two seconds apart: 10 admitted and 4 rejected more each time.
            h.record(
                Duration::from_secs(2 * i),
                totals(10 * i, 4 * i, (6 * i, 2 * i)),
            );
        }
        let points = h.points();
        assert_eq!(points.len(), SAMPLES - 1);
        assert!(points.iter().all(|p| p.admitted_per_second == 5.0));
        assert!(points.iter().all(|p| p.rejected_per_second == 2.0));
        let first_kept = h.started_ms() + 2_000 * 11;
        assert_eq!(points[0].at_ms, first_kept);
        let rates = h.limit_rates()["l"];
        assert_eq!(rates.tokens_per_second, 3.0);
        assert_eq!(rates.rejected_per_second, 1.0);
        let sync = h.recent_sync_seconds().expect("rounds in the window");
        assert!((sync - 0.001).abs() < 1e-9);
    }

    #[test]
    fn a_counter_that_goes_down_counts_as_nothing() {
        let h = History::new();
        h.record(Duration::from_secs(0), totals(100, 50, (9, 9)));
        h.record(Duration::from_secs(2), totals(10, 4, (0, 0)));
        assert_eq!(h.points()[0].admitted_per_second, 0.0);
        assert_eq!(h.limit_rates()["l"], LimitRates::default());
        assert_eq!(h.recent_sync_seconds(), None);
    }

    #[test]
    fn totals_sum_the_outcomes_and_the_limits() {
        let m = Metrics::new(false).expect("metrics");
        m.requests_total
            .with_label_values(&["a", "allowed"])
            .inc_by(3);
        m.requests_total
            .with_label_values(&["b", "allowed"])
            .inc_by(2);
        m.requests_total
            .with_label_values(&["a", "shadow_limited"])
            .inc();
        m.requests_total
            .with_label_values(&["a", "limited"])
            .inc_by(4);
        m.requests_total.with_label_values(&["a", "denied"]).inc();
        m.requests_total.with_label_values(&["a", "no_route"]).inc();
        m.rate_limited_total
            .with_label_values(&["a", "l"])
            .inc_by(2);
        m.rate_limited_total
            .with_label_values(&["b", "l"])
            .inc_by(3);
        m.tokens_consumed_total.with_label_values(&["l"]).inc_by(7);
        let t = totals_of(&m);
        assert_eq!((t.admitted, t.rejected), (6, 5));
        assert_eq!(t.limits["l"], (7, 5));
    }
}
