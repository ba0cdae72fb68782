//! interim bucket (to be replaced by the helper's version)
const UNITS_PER_TOKEN: i128 = 1_000_000_000_000_000_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketParams {
    capacity: u64,
    rate_q: u64,
    initial: u64,
}
#[derive(Debug)]
pub struct ParamError(String);
impl std::fmt::Display for ParamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for ParamError {}
impl BucketParams {
    pub fn new(capacity: u64, r: f64, initial: u64) -> Result<Self, ParamError> {
        if capacity < 1 {
            return Err(ParamError("capacity must be at least 1".into()));
        }
        if !(r.is_finite() && r > 0.0) {
            return Err(ParamError("bad rate".into()));
        }
        let rate_q = (r * 1e9).round();
        if rate_q < 1.0 {
            return Err(ParamError("rate too small".into()));
        }
        if initial > capacity {
            return Err(ParamError("initial > capacity".into()));
        }
        Ok(Self {
            capacity,
            rate_q: rate_q as u64,
            initial,
        })
    }
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
    pub fn initial_tokens(&self) -> u64 {
        self.initial
    }
    pub fn refill_per_second(&self) -> f64 {
        self.rate_q as f64 / 1e9
    }
    fn cap_u(&self) -> i128 {
        self.capacity as i128 * UNITS_PER_TOKEN
    }
}
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub consumed: u64,
    pub attempts: u64,
    pub waste: i128,
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub remaining: u64,
    pub retry_after_ns: u64,
    pub full_in_ns: u64,
    pub never: bool,
}
#[derive(Debug, Clone)]
pub struct Bucket {
    own: Counters,
    others_consumed: u64,
    others_waste: i128,
}

fn credit(p: &BucketParams, now: i64) -> i128 {
    now as i128 * p.rate_q as i128
}
fn ceil_div(a: i128, b: i128) -> u64 {
    if a <= 0 {
        0
    } else {
        u64::try_from((a + b - 1) / b).unwrap_or(u64::MAX)
    }
}

impl Bucket {
    pub fn new(p: &BucketParams, now: i64) -> Self {
        let waste = credit(p, now) - p.initial as i128 * UNITS_PER_TOKEN;
        Bucket {
            own: Counters {
                consumed: 0,
                attempts: 0,
                waste,
            },
            others_consumed: 0,
            others_waste: i128::MIN,
        }
    }
    fn raw_tokens(&self, p: &BucketParams, now: i64) -> i128 {
        let x = (self.own.consumed as i128 + self.others_consumed as i128) * UNITS_PER_TOKEN;
        credit(p, now) - x - self.own.waste.max(self.others_waste)
    }
    fn capped(&self, p: &BucketParams, now: i64) -> i128 {
        self.raw_tokens(p, now).min(p.cap_u())
    }
    pub fn tokens_units(&mut self, p: &BucketParams, now: i64) -> i128 {
        let t = self.raw_tokens(p, now);
        if t > p.cap_u() {
            self.own.waste += t - p.cap_u();
        }
        self.capped(p, now)
    }
    fn decide(p: &BucketParams, tokens: i128, cost: u64) -> Decision {
        let cost_u = cost as i128 * UNITS_PER_TOKEN;
        let rate = p.rate_q as i128;
        if cost > p.capacity {
            return Decision {
                allowed: false,
                remaining: (tokens.max(0) / UNITS_PER_TOKEN) as u64,
                retry_after_ns: ceil_div(p.cap_u() - tokens, rate),
                full_in_ns: ceil_div(p.cap_u() - tokens, rate),
                never: true,
            };
        }
        if tokens >= cost_u {
            let after = tokens - cost_u;
            Decision {
                allowed: true,
                remaining: (after / UNITS_PER_TOKEN) as u64,
                retry_after_ns: 0,
                full_in_ns: ceil_div(p.cap_u() - after, rate),
                never: false,
            }
        } else {
            Decision {
                allowed: false,
                remaining: (tokens.max(0) / UNITS_PER_TOKEN) as u64,
                retry_after_ns: ceil_div(cost_u - tokens, rate),
                full_in_ns: ceil_div(p.cap_u() - tokens, rate),
                never: false,
            }
        }
    }
    pub fn evaluate(&mut self, p: &BucketParams, c: u64, n: i64) -> Decision {
        let t = self.tokens_units(p, n);
        Self::decide(p, t, c)
    }
    pub fn peek(&self, p: &BucketParams, c: u64, n: i64) -> Decision {
        Self::decide(p, self.capped(p, n), c)
    }
    pub fn commit(&mut self, c: u64) {
        self.own.consumed = self.own.consumed.saturating_add(c)
    }
    pub fn record_attempt(&mut self) {
        self.own.attempts = self.own.attempts.saturating_add(1)
    }
    pub fn is_full(&self, p: &BucketParams, n: i64) -> bool {
        self.raw_tokens(p, n) >= p.cap_u()
    }
    pub fn carry_over(&self, o: &BucketParams, nw: &BucketParams, t: i64) -> Bucket {
        let tokens = self.capped(o, t).min(nw.cap_u());
        let mut b = Bucket::new(nw, t);
        b.own.waste = credit(nw, t) - tokens;
        b
    }
}
