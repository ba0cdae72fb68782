//! The registry of live nodes: one hash, `{key_prefix}:nodes`, in which every node writes
//! `NODE_ID -> "MS:INSTANCE"` on each sync (when it last synced, on its clock, and a number
//! that tells its process from another one with the same id). Pacing divides buckets among
//! the live nodes; a node whose entry names another instance has a twin. A node that stops
//! removes its entry, so that the others take its share back at once.

use std::collections::HashMap;
use std::time::Duration;

/// The registry's Redis key.
pub fn key(key_prefix: &str) -> String {
    format!("{key_prefix}:nodes")
}

/// How long the registry hash lives without a write.
pub const TTL_MS: u64 = 3_600_000;

/// This node's entry.
pub fn entry(now_ms: u64, instance: u64) -> String {
    format!("{now_ms}:{instance:x}")
}

/// A node counts as live while its entry is younger than ten sync intervals (at least 3 s).
pub fn live_window_ms(sync_interval: Duration) -> u64 {
    u64::try_from(sync_interval.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(10)
        .max(3_000)
}

/// What the registry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Live nodes, this one included.
    pub live: usize,
    /// Another process wrote this node's entry since this one last did.
    pub twin: bool,
    /// The oldest last sync among the other live nodes (Unix ms; 0 when there are none).
    pub others_synced_ms: u64,
}

/// An entry's value: when the node last synced (Unix ms) and its instance.
fn parse(v: &str) -> Option<(u64, &str)> {
    let (ms, inst) = v.split_once(':')?;
    Some((ms.parse().ok()?, inst))
}

/// The other nodes whose entries are younger than `live_window_ms`, with their last sync.
fn live_entries<'r>(
    reg: &'r HashMap<String, String>,
    node_id: &'r str,
    now_ms: u64,
    live_window_ms: u64,
) -> impl Iterator<Item = (&'r str, u64)> {
    reg.iter()
        .filter(move |(n, _)| n.as_str() != node_id)
        .filter_map(|(n, v)| Some((n.as_str(), parse(v)?.0)))
        .filter(move |(_, seen)| seen.saturating_add(live_window_ms) >= now_ms)
}

/// Reads the registry as it was before this node's write of this round. `registered`: this
/// process has written its entry before (a first write finds the previous process's entry).
pub fn read(
    reg: &HashMap<String, String>,
    (node_id, instance): (&str, u64),
    registered: bool,
    now_ms: u64,
    live_window_ms: u64,
) -> View {
    let others: Vec<u64> = live_entries(reg, node_id, now_ms, live_window_ms)
        .map(|(_, seen)| seen)
        .collect();
    let mine = format!("{instance:x}");
    let twin = registered
        && reg
            .get(node_id)
            .and_then(|v| parse(v))
            .is_some_and(|(_, inst)| inst != mine);
    View {
        live: others.len() + 1,
        twin,
        others_synced_ms: others.iter().copied().min().unwrap_or(0),
    }
}

/// The other nodes live in the registry (as [`read`] counts them): a concurrency limit counts
/// only their slots, so a node that died stops holding any.
pub fn live_others(
    reg: &HashMap<String, String>,
    node_id: &str,
    now_ms: u64,
    live_window_ms: u64,
) -> std::collections::HashSet<String> {
    live_entries(reg, node_id, now_ms, live_window_ms)
        .map(|(n, _)| n.to_string())
        .collect()
}

/// A number that tells this process from another one with the same node_id.
pub fn instance_id() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_recent_nodes_and_sees_a_twin() {
        let now = 1_000_000;
        let reg: HashMap<String, String> = [
            ("me", entry(now - 50, 0xabc)),
            ("fresh", entry(now - 2_999, 1)),
            ("gone", entry(now - 3_001, 2)),
            ("garbage", "x".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let window = live_window_ms(Duration::from_millis(100));
        assert_eq!(window, 3_000);
        let view = read(&reg, ("me", 0xabc), true, now, window);
        assert_eq!(
            view,
            View {
                live: 2,
                twin: false,
                others_synced_ms: now - 2_999
            }
        );
        assert!(read(&reg, ("me", 0xdef), true, now, window).twin);
        let live = live_others(&reg, "me", now, window);
        assert_eq!(live, ["fresh".to_string()].into_iter().collect());
        // A first write finds the previous process's entry: no twin.
        assert!(!read(&reg, ("me", 0xdef), false, now, window).twin);
    }
}
