//! A route as the proxy uses it: what it matches, its upstream and limits, its cost, and
//! what is done with the charge when the answer comes (refunds, response costs).

use super::{LimitId, UpstreamId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub name: String,
    pub path_prefix: String,
    /// `None`: every method.
    pub methods: Option<Vec<http::Method>>,
    /// Exact host, lowercased, without port or trailing dot.
    pub host: Option<String>,
    /// The route's upstream.
    pub upstream: UpstreamId,
    /// The route's limits, in the order written.
    pub limits: Vec<LimitId>,
    pub cost: Cost,
    /// Which answers give the request's cost back on every limit it was charged to.
    pub refund: Refund,
    /// The route's limits charged what the upstream's response reports, in the order of
    /// `limits` (usually none).
    pub response_costs: Vec<ResponseCost>,
    /// How each of `limits` is charged, by position (a concurrency limit, `max_in_flight`:
    /// one slot a request, whatever its cost, given back when it ends): what
    /// [`Route::charge_at`] reads with one index. Empty when every limit
    /// is charged the route's cost ([`ChargedAs::Cost`], what a missing position reads as).
    pub charged_as: Vec<ChargedAs>,
}

/// How a route's request is charged on one of its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargedAs {
    /// The route's cost.
    Cost,
    /// One slot of a concurrency limit.
    Slot,
    /// A response cost's reserve, settled when the response head arrives.
    Reserve(u64),
}

impl ChargedAs {
    /// How the limit at position `at` of a route with these response costs is charged; `slots`:
    /// it is a concurrency limit.
    pub fn of(at: usize, slots: bool, response_costs: &[ResponseCost]) -> ChargedAs {
        if slots {
            return ChargedAs::Slot;
        }
        (response_costs.iter())
            .find(|r| r.at == at)
            .map_or(ChargedAs::Cost, |r| ChargedAs::Reserve(r.reserve))
    }
}

impl Route {
    /// Whether the proxy must keep what an admitted request was charged, to settle or refund
    /// it when the answer comes.
    pub fn keeps_charges(&self) -> bool {
        !self.refund.is_empty() || !self.charged_as.is_empty()
    }

    /// The cost a request of route cost `cost` is charged on the route's limit at position
    /// `at`: one slot on a concurrency limit, a response cost's reserve, else `cost`.
    #[inline]
    pub fn cost_at(&self, at: usize, cost: u64) -> u64 {
        self.charge_at(at, cost).0
    }

    /// What a request of route cost `cost` is charged on the route's limit at position `at`
    /// ([`Route::cost_at`]), and whether that limit is a concurrency limit (one slot a
    /// request).
    #[inline]
    pub fn charge_at(&self, at: usize, cost: u64) -> (u64, bool) {
        match self.charged_as.get(at) {
            Some(ChargedAs::Slot) => (1, true),
            Some(ChargedAs::Reserve(reserve)) => (*reserve, false),
            Some(ChargedAs::Cost) | None => (cost, false),
        }
    }
}

/// A route's limit charged what the upstream reports: `{"limit", "cost": {"response_header",
/// "reserve", "strip"}}`. The request is admitted on `reserve` tokens, charged at once; when
/// the response head arrives, the header's value replaces the reserve (the bucket may go into
/// debt, which delays the key's next requests). A missing or invalid value keeps the reserve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseCost {
    /// Position of the limit in the route's `limits`.
    pub at: usize,
    pub header: http::HeaderName,
    pub reserve: u64,
    /// The header is removed from the client's response.
    pub strip: bool,
}

/// A route's `refund_statuses`: exact statuses and classes (`5xx`: bit 5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refund {
    pub classes: u8,
    pub statuses: Vec<u16>,
}

impl Refund {
    /// Nothing is refunded.
    pub fn is_empty(&self) -> bool {
        self.classes == 0 && self.statuses.is_empty()
    }

    /// Whether an answer with `status` is refunded.
    pub fn covers(&self, status: u16) -> bool {
        let class = status / 100;
        (class < 8 && self.classes & (1 << class) != 0) || self.statuses.contains(&status)
    }
}

/// Tokens a request takes from each limit of its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    Fixed(u64),
    /// One token per started N bytes of the declared body (at least 1).
    PerBytes(u64),
}
