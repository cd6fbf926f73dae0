//! Address safety: which resolved addresses an agent may never reach, and the resolver
//! the egress path asks (a trait, so that a test can answer what DNS rebinding would).
//!
//! Every address a name resolves to is checked; if any is denied the request is refused
//! (a name that answers a public address and a private one is treated as hostile), and the
//! connection goes to the checked address itself: the name is never resolved again.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;

/// A network, `address/prefix-length`, as `[egress] allow_private` lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    len: u8,
}

impl std::str::FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().map_err(|_| format!("{s:?} is not an address/prefix"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() { max } else { l.parse::<u8>().map_err(|_| format!("{s:?}: bad prefix length"))? };
        if len > max {
            return Err(format!("{s:?}: prefix length over {max}"));
        }
        Ok(Self { addr, len })
    }
}

impl Net {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.len == 0 { 0 } else { u32::MAX << (32 - u32::from(self.len)) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.len == 0 { 0 } else { u128::MAX << (128 - u32::from(self.len)) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> Net {
    Net { addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)), len }
}

const fn v6(segs: [u16; 8], len: u8) -> Net {
    Net { addr: IpAddr::V6(Ipv6Addr::new(segs[0], segs[1], segs[2], segs[3], segs[4], segs[5], segs[6], segs[7])), len }
}

/// What an agent may never reach unless `[egress] allow_private` lists it.
pub const DENIED: &[(Net, &str)] = &[
    (v4(0, 0, 0, 0, 8), "unspecified"),
    (v4(10, 0, 0, 0, 8), "private"),
    (v4(100, 64, 0, 0, 10), "shared address space (CGNAT)"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local (cloud metadata)"),
    (v4(172, 16, 0, 0, 12), "private"),
    (v4(192, 0, 0, 0, 24), "IETF protocol assignments"),
    (v4(192, 0, 2, 0, 24), "documentation"),
    (v4(192, 88, 99, 0, 24), "6to4 relay"),
    (v4(192, 168, 0, 0, 16), "private"),
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(198, 51, 100, 0, 24), "documentation"),
    (v4(203, 0, 113, 0, 24), "documentation"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
    (v4(255, 255, 255, 255, 32), "broadcast"),
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "unspecified"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "loopback"),
    (v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), "NAT64"),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard"),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
    (v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), "6to4"),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique local (private; fd00:ec2::254 metadata)"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local"),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// An IPv4-mapped (`::ffff:a.b.c.d`) or IPv4-compatible IPv6 address as the IPv4 address
/// it reaches; others unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                // ::a.b.c.d (deprecated IPv4-compatible), but not :: and ::1.
                if s[..6] == [0; 6] && u128::from(v6) > 1 {
                    IpAddr::V4(Ipv4Addr::from(u32::try_from(u128::from(v6)).unwrap_or(0)))
                } else {
                    ip
                }
            }
        },
        v4 => v4,
    }
}

/// Why `ip` may not be reached, or `None` when it may: the deny rules, less `allow`.
pub fn denied(ip: IpAddr, allow: &[Net]) -> Option<&'static str> {
    if allow.iter().any(|n| n.contains(ip)) {
        return None;
    }
    let ip = canonical(ip);
    DENIED.iter().find(|(n, _)| n.contains(ip)).map(|(_, why)| *why)
}

/// A future the resolver returns.
pub type Lookup<'a> = Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<IpAddr>>> + Send + 'a>>;

/// Resolves host names for the egress path.
pub trait Resolver: Send + Sync + 'static {
    /// Every address `host` resolves to.
    fn lookup<'a>(&'a self, host: &'a str) -> Lookup<'a>;
}

/// The system's resolver (`getaddrinfo` on a blocking thread, through tokio).
#[derive(Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> Lookup<'a> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host, 0)).await?;
            Ok(addrs.map(|a: SocketAddr| a.ip()).collect())
        })
    }
}

/// A resolver answering from a fixed table (tests; names it does not know fail).
#[derive(Debug, Default, Clone)]
pub struct StaticResolver(pub std::collections::HashMap<String, Vec<IpAddr>>);

impl Resolver for StaticResolver {
    fn lookup<'a>(&'a self, host: &'a str) -> Lookup<'a> {
        let found = self.0.get(&host.to_ascii_lowercase()).cloned();
        Box::pin(async move { found.ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no such host")) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_special_addresses_are_denied() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fd00:ec2::254",
            "fc00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(denied(ip(a), &[]).is_some(), "{a}");
        }
        for a in ["93.184.216.34", "1.1.1.1", "172.32.0.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert_eq!(denied(ip(a), &[]), None, "{a}");
        }
    }

    #[test]
    fn allow_private_makes_exceptions() {
        let allow: Vec<Net> = vec!["127.0.0.1/32".parse().unwrap()];
        assert_eq!(denied(ip("127.0.0.1"), &allow), None);
        assert_eq!(denied(ip("::ffff:127.0.0.1"), &allow), None);
        assert!(denied(ip("127.0.0.2"), &allow).is_some());
        assert!(denied(ip("169.254.169.254"), &allow).is_some());
        assert!("10.0.0.0/33".parse::<Net>().is_err());
        assert!("nonsense".parse::<Net>().is_err());
    }
}
