//! Calendar windows of a quota (`minute`, `hour`, `day`, `month`), in UTC.
//!
//! A quota is a bucket that counts one window at a time: at most `quota` tokens per window,
//! all of them back at the window's start, whatever the window before it took. Its counters
//! (every node's consumption, requests, credits and the credit lost at the cap) are those of
//! one window, the one the bucket's waste names ([`WindowWaste`]); the first decision, sync or
//! credit in a later window starts that window from zero (`Bucket::roll`), so an overshoot
//! of the nodes together in one window (what they spent unseen between syncs) is never a debt
//! carried into the next. Within a window a quota is a bucket whose credit is the quota and
//! never flows, capped at the quota as a bucket's tokens are at its capacity (see
//! [`super::bucket`]): the per-node monotone counters, their max-merge and the pacing between
//! syncs hold unchanged. In Redis a quota's counter fields name their window
//! (`NODE:consumed@2026-11-29`, see [`Window::label`] and `shared::layout`), and old windows'
//! fields are removed as the nodes write the current one.
//!
//! Months have their real length (28 to 31 days); there are no leap seconds in Unix time, so
//! every other window has a fixed length.

use std::fmt;

const NS_PER_SEC: i64 = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// A quota's window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Minute,
    Hour,
    Day,
    Month,
}

impl Window {
    /// The config's name of a window.
    pub fn parse(s: &str) -> Option<Window> {
        Some(match s {
            "minute" => Window::Minute,
            "hour" => Window::Hour,
            "day" => Window::Day,
            "month" => Window::Month,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
            Window::Month => "month",
        }
    }

    /// Seconds of a fixed window; for a month, its longest (31 days): what the average rate
    /// written for operators and drift checks is based on, and how long a quota's state may
    /// matter.
    pub fn nominal_secs(self) -> i64 {
        match self {
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => SECS_PER_DAY,
            Window::Month => 31 * SECS_PER_DAY,
        }
    }

    /// The index of the window holding `now_ns` (nanoseconds since the Unix epoch; windows
    /// before the epoch have negative indices).
    pub fn index(self, now_ns: i64) -> i64 {
        match self {
            Window::Month => month_index(now_ns.div_euclid(NS_PER_SEC)),
            // One division: floor(floor(n / a) / b) = floor(n / ab) for integers a, b > 0.
            w => now_ns.div_euclid(w.nominal_ns()),
        }
    }

    /// Nanoseconds of a fixed window (a month: its longest); at most a day's, 8.64e13.
    fn nominal_ns(self) -> i64 {
        self.nominal_secs() * NS_PER_SEC
    }

    /// When window `index` starts, in nanoseconds since the epoch (saturating).
    pub fn start_ns(self, index: i64) -> i64 {
        let secs = match self {
            Window::Month => {
                let y = 1970 + index.div_euclid(12);
                let m = index.rem_euclid(12) as u32 + 1;
                days_from_civil(y, m, 1).saturating_mul(SECS_PER_DAY)
            }
            w => index.saturating_mul(w.nominal_secs()),
        };
        secs.saturating_mul(NS_PER_SEC)
    }

    /// Nanoseconds from `now_ns` until the window holding it ends. Out of line, as
    /// [`month_index`] is: a bucket's decision, inlined into the store's loop, calls it for
    /// quotas only.
    #[inline(never)]
    pub fn left_ns(self, now_ns: i64) -> u64 {
        let len = self.nominal_ns();
        // A fixed window whose start and end are representable (all but a window's length at
        // either end of the i64 range, where the end saturates): one remainder.
        if self != Window::Month && (i64::MIN + len..=i64::MAX - len).contains(&now_ns) {
            return (len - now_ns.rem_euclid(len)) as u64;
        }
        let end = self.start_ns(self.index(now_ns).saturating_add(1));
        u64::try_from(end.saturating_sub(now_ns)).unwrap_or(0)
    }

    /// Seconds of the window holding `now_ns` (a month's real length).
    pub fn secs_at(self, now_ns: i64) -> u64 {
        let i = self.index(now_ns);
        let len = self.start_ns(i.saturating_add(1)) - self.start_ns(i);
        u64::try_from(len / NS_PER_SEC).unwrap_or(0)
    }
}

impl Window {
    /// The name of window `index` in Redis field names: its UTC start, to the window's
    /// precision (`2026-11` for a month, `2026-11-29` for a day, `2026-11-29T08` for an hour,
    /// `2026-11-29T08:41` for a minute). Names of one kind of window sort as their windows do.
    pub fn label(self, index: i64) -> String {
        let secs = self.start_ns(index).div_euclid(NS_PER_SEC);
        let (y, m, d) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
        let in_day = secs.rem_euclid(SECS_PER_DAY);
        let (h, min) = (in_day / 3_600, in_day % 3_600 / 60);
        match self {
            Window::Month => format!("{y:04}-{m:02}"),
            Window::Day => format!("{y:04}-{m:02}-{d:02}"),
            Window::Hour => format!("{y:04}-{m:02}-{d:02}T{h:02}"),
            Window::Minute => format!("{y:04}-{m:02}-{d:02}T{h:02}:{min:02}"),
        }
    }
}

/// One window of a quota: its kind and its index (see [`Window::index`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowAt {
    pub window: Window,
    pub index: i64,
}

impl WindowAt {
    /// The window of kind `window` holding `now_ns`.
    pub fn of(window: Window, now_ns: i64) -> WindowAt {
        WindowAt {
            window,
            index: window.index(now_ns),
        }
    }

    /// Its name in Redis field names ([`Window::label`]).
    pub fn label(&self) -> String {
        self.window.label(self.index)
    }
}

/// A quota bucket's waste, as its counters keep it (`Counters::waste`): the window the
/// counters are of, and the tokens of credit the cap took in that window (credits beyond what
/// the window consumed: a refund arriving when the quota is full, two resets at once; negative
/// only after a reload lowered the quota). Packed into one `i128` as `index x 2^64 + tokens`,
/// so that the max-merge of two wastes keeps the later window, and within one window the
/// greater loss, as a bucket's waste does; `i128::MIN` (no waste known) is before every window.
/// (Its conversions to and from units are with the units, in `params`.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowWaste {
    pub index: i64,
    pub tokens: i64,
}

impl WindowWaste {
    pub fn pack(self) -> i128 {
        (i128::from(self.index) << 64).saturating_add(i128::from(self.tokens))
    }

    pub fn unpack(waste: i128) -> WindowWaste {
        // The low 64 bits, as a signed number, are the tokens; the high ones the window, less
        // one when the tokens are negative (they borrowed from it).
        let tokens = waste as i64;
        let high = (waste >> 64) as i64;
        WindowWaste {
            index: if tokens < 0 {
                high.saturating_add(1)
            } else {
                high
            },
            tokens,
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The index of the month holding `secs` (seconds since the epoch): months since 1970-01.
/// Out of line: inlined, the compiler computes it (a hundred instructions of calendar
/// arithmetic) ahead of the store's loop over a request's limits, on every request, whether
/// or not any of them is a monthly quota.
#[inline(never)]
fn month_index(secs: i64) -> i64 {
    let (y, m, _) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
    (y - 1970) * 12 + (i64::from(m) - 1)
}

/// (year, month 1-12, day 1-31) of a day counted from 1970-01-01 (proleptic Gregorian; the
/// algorithm of H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days from 1970-01-01 to (year, month, day): the inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = NS_PER_SEC;

    /// Unix seconds of a UTC date (test helper).
    fn at(y: i64, m: u32, d: u32, secs_into_day: i64) -> i64 {
        (days_from_civil(y, m, d) * SECS_PER_DAY + secs_into_day) * S
    }

    #[test]
    fn civil_dates_round_trip_and_match_known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(days_from_civil(2026, 11, 29), 20_786);
        for z in (-1_000_000..1_000_000).step_by(997) {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn fixed_windows_start_on_their_boundaries() {
        let t = at(2026, 11, 29, 3 * 3600 + 25 * 60 + 51) + 123;
        assert_eq!(Window::Minute.left_ns(t), (9 * S - 123) as u64);
        assert_eq!(Window::Hour.left_ns(t), ((34 * 60 + 9) * S - 123) as u64);
        assert_eq!(Window::Day.secs_at(t), 86_400);
        assert_eq!(
            Window::Day.start_ns(Window::Day.index(t)),
            at(2026, 11, 29, 0)
        );
        // The last nanosecond of a window belongs to it; the next one starts the next.
        let midnight = at(2026, 11, 30, 0);
        assert_eq!(
            Window::Day.index(midnight - 1) + 1,
            Window::Day.index(midnight)
        );
        assert_eq!(Window::Day.left_ns(midnight - 1), 1);
        // Before the epoch too.
        assert_eq!(Window::Minute.index(-1), -1);
        assert_eq!(Window::Minute.start_ns(-1), -60 * S);
    }

    #[test]
    fn months_have_their_real_length() {
        for (y, m, days) in [
            (2026, 2, 28),
            (2024, 2, 29),
            (2000, 2, 29),
            (1900, 2, 28),
            (2026, 4, 30),
            (2026, 12, 31),
        ] {
            let mid = at(y, m, 15, 12 * 3600);
            assert_eq!(Window::Month.secs_at(mid), days * 86_400, "{y}-{m}");
            let i = Window::Month.index(mid);
            assert_eq!(Window::Month.start_ns(i), at(y, m, 1, 0));
            let next = if m == 12 {
                at(y + 1, 1, 1, 0)
            } else {
                at(y, m + 1, 1, 0)
            };
            assert_eq!(Window::Month.start_ns(i + 1), next);
            assert_eq!(Window::Month.left_ns(next - 1), 1);
        }
        assert_eq!(Window::Month.index(0), 0);
        assert_eq!(Window::Month.index(at(1969, 12, 31, 0)), -1);
    }

    #[test]
    fn names_round_trip() {
        for w in [Window::Minute, Window::Hour, Window::Day, Window::Month] {
            assert_eq!(Window::parse(w.name()), Some(w));
        }
        assert_eq!(Window::parse("week"), None);
    }

    #[test]
    fn labels_name_the_utc_start_and_sort_as_the_windows_do() {
        let t = at(2026, 11, 29, 8 * 3600 + 41 * 60 + 7);
        let label = |w: Window| w.label(w.index(t));
        assert_eq!(label(Window::Minute), "2026-11-29T08:41");
        assert_eq!(label(Window::Hour), "2026-11-29T08");
        assert_eq!(label(Window::Day), "2026-11-29");
        assert_eq!(label(Window::Month), "2026-11");
        assert_eq!(WindowAt::of(Window::Day, t).label(), "2026-11-29");
        // Across a year's end, and in the right order as text.
        let eve = at(2026, 12, 31, 86_399);
        for w in [Window::Minute, Window::Hour, Window::Day, Window::Month] {
            let (a, b) = (w.label(w.index(eve)), w.label(w.index(eve) + 1));
            assert!(a < b, "{w}: {a} < {b}");
            assert!(b.starts_with("2027-01"), "{w}: {b}");
        }
        assert_eq!(
            Window::Minute.label(Window::Minute.index(eve)),
            "2026-12-31T23:59"
        );
    }

    #[test]
    fn a_window_waste_keeps_its_window_and_orders_windows_first() {
        for (index, tokens) in [
            (0, 0),
            (29_433_761, 5),
            (-3, -7),
            (i64::MAX, i64::MIN),
            (7, i64::MAX),
        ] {
            let w = WindowWaste { index, tokens };
            assert_eq!(WindowWaste::unpack(w.pack()), w);
        }
        let w = |index, tokens| WindowWaste { index, tokens }.pack();
        assert!(
            w(10, 1_000) < w(11, -1_000),
            "a later window wins a max-merge"
        );
        assert!(w(10, 3) < w(10, 4) && w(10, -4) < w(10, 3));
        // Nothing known is before every window.
        assert_eq!(WindowWaste::unpack(i128::MIN).index, i64::MIN);
        assert!(i128::MIN < w(i64::MIN + 1, 0));
    }

    /// A quota through the bucket: all of it back at the window's start, `t` and
    /// `Retry-After` until then, and an overshoot that is the window's alone.
    #[test]
    fn a_quota_resets_at_its_window_and_says_when() {
        use crate::limit::bucket::{Bucket, BucketParams};
        let p = BucketParams::quota(3, Window::Minute).expect("params");
        assert_eq!(p.capacity(), 3);
        assert_eq!(p.rate_q(), 50_000_000, "3 a minute on average");
        let t0 = at(2026, 11, 29, 3600 + 50); // 10 s before a minute ends
        let mut b = Bucket::new(&p, t0);
        assert_eq!(b.window_index(&p), Some(Window::Minute.index(t0)));
        for left in [2, 1, 0] {
            let d = b.try_take(&p, 1, t0);
            assert!(d.allowed);
            assert_eq!((d.remaining, d.full_in_ns), (left, (10 * S) as u64));
        }
        let d = b.try_take(&p, 1, t0 + 5 * S);
        assert!(!d.allowed, "the quota is spent until the minute ends");
        assert_eq!(d.retry_after_ns, (5 * S) as u64);
        // The next minute: all 3 back, none more (the cap), counted from zero.
        let next = t0 + 10 * S;
        assert!(!b.try_take(&p, 1, next - 1).allowed);
        let d = b.try_take(&p, 1, next);
        assert!(d.allowed);
        assert_eq!((d.remaining, d.full_in_ns), (2, (60 * S) as u64));
        assert_eq!((b.own().consumed, b.own().attempts), (1, 1));
        assert_eq!(b.window_index(&p), Some(Window::Minute.index(next)));
        // An idle hour: still just 3.
        let later = next + 3600 * S;
        assert_eq!(b.peek(&p, 0, later).remaining, 3);
        // A cost of 5 can never be paid. A debt of 4 (the nodes together spent 7, each on a
        // view that did not show the others yet) is this window's alone: the next starts
        // with all 3.
        assert!(b.try_take(&p, 5, later).never);
        b.absorb(&Default::default(), 7, i128::MIN);
        let d = b.peek(&p, 1, later);
        assert!(!d.allowed);
        let end = Window::Minute.left_ns(later);
        assert_eq!(d.retry_after_ns, end, "until the next window");
        let after = later + end as i64;
        assert_eq!(b.peek(&p, 0, after).remaining, 3, "no debt carried");
        assert!(b.roll(&p, after), "a new window");
        assert!(!b.roll(&p, after), "once");
        assert_eq!(b.try_take(&p, 3, after).remaining, 0);
        assert!(!b.try_take(&p, 1, after).allowed);
    }

    /// A credit beyond what the window consumed (a refund when the quota is full) is lost to
    /// the cap in that window: it never lets the window give more than the quota.
    #[test]
    fn a_quota_never_gives_more_than_itself_in_a_window() {
        use crate::limit::bucket::{Bucket, BucketParams};
        let p = BucketParams::quota(3, Window::Hour).expect("params");
        let t0 = at(2026, 11, 29, 3600);
        let mut b = Bucket::new(&p, t0);
        b.add_credit(2);
        assert_eq!(b.peek(&p, 0, t0).remaining, 3);
        let admitted = (0..10).filter(|_| b.try_take(&p, 1, t0).allowed).count();
        assert_eq!(admitted, 3);
        // Another node's waste of an earlier window says nothing of this one.
        let mut c = Bucket::new(&p, t0);
        let old = WindowWaste {
            index: Window::Hour.index(t0) - 1,
            tokens: 3,
        };
        c.absorb(&Default::default(), 0, old.pack());
        assert_eq!(c.peek(&p, 0, t0).remaining, 3);
    }

    #[test]
    fn fixed_windows_index_and_time_left_as_by_seconds_then_windows() {
        // The two-step definitions these replace: whole seconds, then windows of seconds.
        let index = |w: Window, n: i64| n.div_euclid(NS_PER_SEC).div_euclid(w.nominal_secs());
        let left = |w: Window, n: i64| {
            let end = w.start_ns(index(w, n).saturating_add(1));
            u64::try_from(end.saturating_sub(n)).unwrap_or(0)
        };
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut samples: Vec<i64> = vec![0, -1, 1, i64::MIN, i64::MAX, i64::MIN + 1, i64::MAX - 1];
        for w in [Window::Minute, Window::Hour, Window::Day] {
            let len = w.nominal_ns();
            for edge in [
                i64::MIN + len,
                i64::MAX - len,
                0,
                1_764_460_800 * NS_PER_SEC,
            ] {
                samples.extend([edge - 1, edge, edge + 1]);
            }
        }
        for _ in 0..200_000 {
            // xorshift: values over the whole range, and within a few years of now.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            samples.push(x as i64);
            samples
                .push(1_764_460_800 * NS_PER_SEC + (x % (400 * 86_400 * NS_PER_SEC as u64)) as i64);
        }
        for w in [Window::Minute, Window::Hour, Window::Day] {
            for &n in &samples {
                assert_eq!(w.index(n), index(w, n), "{w:?} index at {n}");
                assert_eq!(w.left_ns(n), left(w, n), "{w:?} left at {n}");
            }
        }
    }
}
