//! The client IP used for `client_ip` keys, logs and `X-Forwarded-For`.
//!
//! `X-Forwarded-For` is honoured only when the TCP peer is inside `trusted_proxies`; the client
//! is then the rightmost address of the header that is not itself a trusted proxy (addresses to
//! the left of it were written by the client and prove nothing). `Forwarded` and `X-Real-IP`
//! are never read: a client could set them, and nginx and Envoy read XFF by default too.

use ipnet::IpNet;
use std::net::IpAddr;

/// Is `ip` inside one of `trusted`? IPv4-mapped IPv6 peers count as their IPv4 address.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// `::ffff:a.b.c.d` becomes `a.b.c.d`, so one CIDR list covers dual-stack listeners.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Parses one element of an XFF list: a bare IP, optionally with a port (`1.2.3.4:5`,
/// `[::1]:5`); anything else is `None`.
fn parse_xff_element(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip());
    }
    None
}

/// The client address of a request whose TCP peer is `peer`, given all `X-Forwarded-For`
/// header values in order. A malformed element ends the walk: the last good address to its
/// right stands (a trusted proxy never writes garbage, so garbage came from the client).
pub fn client_ip<'a>(
    peer: IpAddr,
    xff_values: impl Iterator<Item = &'a [u8]>,
    trusted: &[IpNet],
) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return peer;
    }
    let mut elements: Vec<&str> = Vec::new();
    for v in xff_values {
        let Ok(s) = std::str::from_utf8(v) else {
            return peer;
        };
        elements.extend(s.split(','));
    }
    let mut client = peer;
    for e in elements.iter().rev() {
        match parse_xff_element(e) {
            Some(ip) => {
                let ip = canonical(ip);
                client = ip;
                if !is_trusted(ip, trusted) {
                    break;
                }
            }
            None => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_ignores_xff() {
        let t = nets(&["10.0.0.0/8"]);
        let h = [b"1.2.3.4".as_slice()];
        assert_eq!(
            client_ip(ip("192.0.2.1"), h.into_iter(), &t),
            ip("192.0.2.1")
        );
    }

    #[test]
    fn trusted_peer_takes_rightmost_untrusted() {
        let t = nets(&["10.0.0.0/8"]);
        let h = [b"6.6.6.6, 1.2.3.4".as_slice(), b"10.1.1.1".as_slice()];
        assert_eq!(client_ip(ip("10.0.0.2"), h.into_iter(), &t), ip("1.2.3.4"));
    }

    #[test]
    fn all_trusted_chain_gives_leftmost() {
        let t = nets(&["10.0.0.0/8"]);
        let h = [b"10.9.9.9, 10.1.1.1".as_slice()];
        assert_eq!(client_ip(ip("10.0.0.2"), h.into_iter(), &t), ip("10.9.9.9"));
    }

    #[test]
    fn garbage_stops_the_walk() {
        let t = nets(&["10.0.0.0/8"]);
        let h = [b"1.1.1.1, garbage, 10.1.1.1".as_slice()];
        assert_eq!(client_ip(ip("10.0.0.2"), h.into_iter(), &t), ip("10.1.1.1"));
        let none: [&[u8]; 0] = [];
        assert_eq!(
            client_ip(ip("10.0.0.2"), none.into_iter(), &t),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn mapped_ipv6_and_ports() {
        let t = nets(&["127.0.0.0/8"]);
        let h = [b"[2001:db8::1]:443".as_slice()];
        assert_eq!(
            client_ip(ip("::ffff:127.0.0.1"), h.into_iter(), &t),
            ip("2001:db8::1")
        );
    }
}
