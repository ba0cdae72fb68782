//! Upstream pools: each upstream's resolved servers, their health, a round-robin cursor, and
//! the TLS roots for its servers. The health and the cursor are live state: they survive a
//! reload that keeps the pool's servers (a reload does not make a failing server healthy).

use rustls::pki_types::pem::Error as PemError;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// An upstream pool, compiled: resolved server addresses, their health, a round-robin cursor,
/// and the TLS roots for its servers (`ca_file`, else the system's).
pub struct UpstreamPool {
    pub name: String,
    pub servers: Vec<SocketAddr>,
    /// The private CA of `ca_file`, parsed once.
    pub ca: Option<Arc<pingora::protocols::tls::CaType>>,
    state: Arc<PoolState>,
}

/// What a pool learns while it runs.
struct PoolState {
    /// Per server: passing its health checks (all start healthy; no checks, always healthy).
    healthy: Vec<AtomicBool>,
    next: AtomicUsize,
}

impl UpstreamPool {
    /// A pool whose servers all start healthy.
    pub fn new(
        name: String,
        servers: Vec<SocketAddr>,
        ca: Option<Arc<pingora::protocols::tls::CaType>>,
    ) -> UpstreamPool {
        let state = Arc::new(PoolState {
            healthy: servers.iter().map(|_| AtomicBool::new(true)).collect(),
            next: AtomicUsize::new(0),
        });
        UpstreamPool {
            name,
            servers,
            ca,
            state,
        }
    }

    /// Takes over `old`'s health and round-robin position when it has the same servers.
    pub fn keep_state_of(&mut self, old: &UpstreamPool) {
        if old.name == self.name && old.servers == self.servers {
            self.state = old.state.clone();
        }
    }

    /// The next healthy server in round-robin order; None when every server is unhealthy.
    pub fn next_server(&self) -> Option<SocketAddr> {
        let n = self.servers.len();
        if n == 0 {
            return None;
        }
        let start = self.state.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| self.is_healthy(i))
            .map(|i| self.servers[i])
    }

    /// Whether server `server` passes its health checks.
    pub fn is_healthy(&self, server: usize) -> bool {
        self.state
            .healthy
            .get(server)
            .is_some_and(|h| h.load(Ordering::Relaxed))
    }

    /// Marks a server up or down; returns whether that changed its state.
    pub fn set_health(&self, server: usize, up: bool) -> bool {
        self.state
            .healthy
            .get(server)
            .is_some_and(|h| h.swap(up, Ordering::Relaxed) != up)
    }
}

/// Why a CA file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The file cannot be opened.
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: PemError },
    /// The file is not PEM, or holds something other than certificates.
    #[error("{}: not PEM certificates: {source}", path.display())]
    NotPem { path: PathBuf, source: PemError },
    /// The file holds no certificate.
    #[error("{}: no certificate in the file", path.display())]
    Empty { path: PathBuf },
    /// DER that pingora's certificate wrapper cannot parse.
    #[error("{}: a certificate cannot be parsed", path.display())]
    Unparsable { path: PathBuf },
}

/// Reads a PEM file of CA certificates into the form pingora's TLS connector takes.
pub fn load_ca(path: &Path) -> Result<Arc<pingora::protocols::tls::CaType>, CaError> {
    use rustls::pki_types::pem::PemObject;
    let path_buf = || path.to_path_buf();
    let certs: Vec<Vec<u8>> = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|source| CaError::Read {
            path: path_buf(),
            source,
        })?
        .map(|c| c.map(|c| c.to_vec()))
        .collect::<Result<_, _>>()
        .map_err(|source| CaError::NotPem {
            path: path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(CaError::Empty { path: path_buf() });
    }
    // pingora's certificate wrapper panics on DER it cannot parse: refuse such a file here.
    let wrapped = std::panic::catch_unwind(|| {
        certs
            .into_iter()
            .map(|der| pingora::utils::tls::WrappedX509::new(der, pingora::utils::tls::parse_x509))
            .collect::<Vec<_>>()
    })
    .map_err(|_| CaError::Unparsable { path: path_buf() })?;
    Ok(Arc::from(wrapped.into_boxed_slice()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(servers: &[&str]) -> UpstreamPool {
        let servers = servers.iter().map(|s| s.parse().expect("addr")).collect();
        UpstreamPool::new("api".into(), servers, None)
    }

    #[test]
    fn a_reload_keeping_the_servers_keeps_their_health_and_a_changed_pool_starts_afresh() {
        let old = pool(&["127.0.0.1:1", "127.0.0.1:2"]);
        assert!(old.set_health(0, false));
        let mut same = pool(&["127.0.0.1:1", "127.0.0.1:2"]);
        same.keep_state_of(&old);
        assert!(!same.is_healthy(0) && same.is_healthy(1));
        for _ in 0..3 {
            assert_eq!(
                same.next_server(),
                Some("127.0.0.1:2".parse().expect("addr"))
            );
        }
        let mut other = pool(&["127.0.0.1:1", "127.0.0.1:3"]);
        other.keep_state_of(&old);
        assert!(other.is_healthy(0), "other servers: checked afresh");
    }
}
