//! The clock check: refill is computed from time on every node against the same counters,
//! so a node whose clock runs ahead would see more tokens than the others. Every few seconds
//! the sync loop reads Redis `TIME` three times, takes the sample with the shortest round
//! trip, and estimates this host's offset as `TIME - (sent + received) / 2` (error at most
//! half that round trip). The store's clock is corrected by the estimate whenever it moves by
//! more than its error (and at least 1 ms), so every node refills on Redis's time line; an
//! offset over 50 ms is logged, and `clock_offset_seconds` shows it. In a cluster, `TIME`
//! comes from one of the primaries.

use super::conn::Conn;
use crate::app::node::Node;

/// Measures this node's clock against Redis `TIME` (three samples, the shortest round
/// trip wins) and corrects the store's clock when the estimate moved by more than its
/// error: refill is computed from time, so every node must agree on it.
pub async fn check_clock_of(node: &Node, con: &mut Conn) -> redis::RedisResult<()> {
    let clock = &node.clock;
    let mut samples = Vec::with_capacity(3);
    for _ in 0..3 {
        let t0 = clock.base_ns();
        let r = con.time_ns().await?;
        let t1 = clock.base_ns();
        samples.push((t0, t1, r));
    }
    if let Some((offset, error)) = crate::limit::clock::estimate_offset(&samples) {
        let old = clock.offset_ns();
        if (offset - old).abs() > error.max(1_000_000) {
            clock.set_offset_ns(offset);
            if (offset - old).abs() > 50_000_000 {
                tracing::warn!(
                    offset_ms = offset / 1_000_000,
                    error_ms = error / 1_000_000,
                    "this host's clock differs from redis TIME: refill now follows redis's clock (check NTP on this host)"
                );
            }
        }
        node.metrics
            .clock_offset_seconds
            .set(clock.offset_ns() as f64 / 1e9);
    }
    Ok(())
}
