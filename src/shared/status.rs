//! What the sync loop knows of the shared store: whether the last round went through, how
//! many nodes are live, whether another process writes this node's fields. The loop writes
//! it; the admin API reads it (and the metrics show the same values), so nothing reads a
//! gauge back as state.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The sync loop's view, shared with its readers.
#[derive(Debug)]
pub struct SyncStatus {
    connected: AtomicBool,
    live_nodes: AtomicUsize,
    duplicate_node_id: AtomicBool,
}

impl Default for SyncStatus {
    /// Not connected until a round goes through; this node alone.
    fn default() -> Self {
        SyncStatus {
            connected: AtomicBool::new(false),
            live_nodes: AtomicUsize::new(1),
            duplicate_node_id: AtomicBool::new(false),
        }
    }
}

impl SyncStatus {
    /// Whether the last round trip to the store went through.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub fn set_connected(&self, up: bool) {
        self.connected.store(up, Ordering::Relaxed);
    }

    /// Live nodes in the registry, this one included.
    pub fn live_nodes(&self) -> usize {
        self.live_nodes.load(Ordering::Relaxed)
    }

    pub fn set_live_nodes(&self, n: usize) {
        self.live_nodes.store(n.max(1), Ordering::Relaxed);
    }

    /// Another live process writes this node's fields (two nodes share one `node_id`).
    pub fn duplicate_node_id(&self) -> bool {
        self.duplicate_node_id.load(Ordering::Relaxed)
    }

    /// Sets the flag; returns what it was.
    pub fn set_duplicate_node_id(&self, twin: bool) -> bool {
        self.duplicate_node_id.swap(twin, Ordering::Relaxed)
    }
}
