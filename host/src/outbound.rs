//! Outbound network grants (`--allow-outbound HOST:PORT`, the per-app key
//! `allow_outbound`): which TCP connections and which DNS names a sandbox
//! may use, enforced through wasmtime-wasi's `wasi:sockets` address check
//! and name lookup.
//!
//! Nothing is granted by default. A grant names a port and one of: a DNS
//! name, an IP address, or a CIDR block. A connection is allowed when its
//! address and port match an IP or CIDR grant, or when the address is one
//! the host resolves a granted name to (on that port). Loopback, private,
//! link-local and other special addresses are reachable only through an
//! IP or CIDR grant that covers them: a name that resolves to one is
//! refused unless the address is granted too, so 169.254.169.254 (cloud
//! metadata) is never reached by accident. The guest may resolve only the
//! names a grant names. No listening, no UDP.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Result};

/// What a grant names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A DNS name, lowercase, without a trailing dot.
    Name(String),
    /// An address block (a single address is a /32 or /128).
    Block(IpAddr, u8),
}

/// One `HOST:PORT` grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub target: Target,
    pub port: u16,
    /// As the operator wrote it, for messages.
    pub spec: String,
}

impl Grant {
    /// Parses `db.internal:5432`, `10.0.0.5:6379`, `10.0.0.0/8:443` or
    /// `[::1]:8080`.
    ///
    /// # Errors
    /// Says what is wrong; `key` names the flag or config key.
    pub fn parse(spec: &str, key: &str) -> Result<Self> {
        let bad = |why: &str| anyhow::anyhow!("{key} {spec}: {why} (expected HOST:PORT, e.g. db.internal:5432)");
        let (host, port) = match spec.strip_prefix('[') {
            Some(rest) => {
                let (host, rest) = rest.split_once(']').ok_or_else(|| bad("an unclosed ["))?;
                (host, rest.strip_prefix(':').ok_or_else(|| bad("no port"))?)
            }
            None => spec.rsplit_once(':').ok_or_else(|| bad("no port"))?,
        };
        let port: u16 = port.parse().ok().filter(|p| *p != 0).ok_or_else(|| bad("the port must be 1 to 65535"))?;
        let target = if let Some((ip, bits)) = host.split_once('/') {
            let ip: IpAddr = ip.parse().map_err(|_| bad("not an IP address before the /"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits.parse().ok().filter(|b| *b <= max).ok_or_else(|| bad("a bad prefix length"))?;
            Target::Block(ip, bits)
        } else if let Ok(ip) = host.parse::<IpAddr>() {
            Target::Block(ip, if ip.is_ipv4() { 32 } else { 128 })
        } else {
            let name = host.trim_end_matches('.').to_ascii_lowercase();
            let label_ok =
                |l: &str| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if name.is_empty() || !name.split('.').all(label_ok) {
                bail!(bad("not a host name, an IP address or a CIDR block"));
            }
            Target::Name(name)
        };
        Ok(Self { target, port, spec: spec.to_owned() })
    }
}

/// Whether `ip` is in the block `net/bits`.
fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip.to_canonical(), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - u32::from(bits)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - u32::from(bits)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Loopback, private, link-local, unspecified, multicast and the like:
/// reachable only by an IP or CIDR grant that names them (one of /8 or
/// longer for IPv4, /16 or longer for IPv6).
///
/// An IPv6 address that stands for an IPv4 one through a translator or a
/// tunnel (NAT64 `64:ff9b::/96` and `64:ff9b:1::/48`, 6to4 `2002::/16`,
/// Teredo `2001::/32`, IPv4-compatible `::a.b.c.d`) is special whatever it
/// embeds: a translator on the network path would deliver it to an
/// address (169.254.169.254, 10.0.0.1) the host cannot see from here. An
/// IPv4-mapped one (`::ffff:a.b.c.d`) is the IPv4 address itself.
pub fn is_special(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || a == 100 && (b & 0xc0) == 64 // 100.64/10, shared address space
                || a == 192 && b == 0 && c == 0 // 192.0.0/24, IETF protocol assignments
                || a == 192 && b == 88 && c == 99 // 192.88.99/24, the 6to4 relay anycast
                || a == 198 && (b & 0xfe) == 18 // 198.18/15, benchmarking
                || a >= 240 // 240/4, reserved
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link local
                || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, site local
                || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] // 64:ff9b::/96, NAT64
                || s[..3] == [0x64, 0xff9b, 1] // 64:ff9b:1::/48, local-use NAT64
                || s[0] == 0x2002 // 2002::/16, 6to4
                || s[..2] == [0x2001, 0] // 2001::/32, Teredo
                || s[..2] == [0x2001, 0xdb8] // 2001:db8::/32, documentation
                || s[..4] == [0x100, 0, 0, 0] // 100::/64, discard only
                || s[..6] == [0; 6] // ::/96, IPv4-compatible (deprecated)
        }
    }
}

/// An app's grants, with what one request resolved.
#[derive(Debug)]
pub struct Policy {
    /// The app's grants, shared by all its requests.
    grants: Arc<[Grant]>,
    /// Addresses the host resolved granted names to in this request.
    resolved: Mutex<HashMap<String, Vec<IpAddr>>>,
}

impl Policy {
    pub fn new(grants: Arc<[Grant]>) -> Self {
        Self { grants, resolved: Mutex::default() }
    }

    /// Whether the guest may look `name` up: a granted name, or an IP
    /// literal (which resolves to itself, and is checked at connect).
    pub fn may_resolve(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        name.parse::<IpAddr>().is_ok() || self.grants.iter().any(|g| matches!(&g.target, Target::Name(n) if *n == name))
    }

    /// Whether a TCP connection to `addr` is granted. Names are resolved by
    /// the host (once per request and name).
    pub async fn allows(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        let special = is_special(ip);
        // A special address needs a grant that names its block: a block as
        // wide as /0-/7 (IPv6: /0-/15) covers only public addresses.
        let names_block = |net: IpAddr, bits: u8| !special || bits >= if net.is_ipv4() { 8 } else { 16 };
        let by_block = self.grants.iter().any(|g| {
            g.port == addr.port()
                && matches!(g.target, Target::Block(net, bits) if in_block(ip, net, bits) && names_block(net, bits))
        });
        if by_block {
            return true;
        }
        if special {
            return false;
        }
        for grant in self.grants.iter().filter(|g| g.port == addr.port()) {
            let Target::Name(name) = &grant.target else { continue };
            let known = self.resolved.lock().expect("never poisoned").get(name).cloned();
            let ips = match known {
                Some(ips) => ips,
                None => {
                    let ips: Vec<IpAddr> = match tokio::net::lookup_host((name.as_str(), grant.port)).await {
                        Ok(addrs) => addrs.map(|a| a.ip().to_canonical()).collect(),
                        Err(_) => Vec::new(),
                    };
                    self.resolved.lock().expect("never poisoned").insert(name.clone(), ips.clone());
                    ips
                }
            };
            if ips.contains(&ip) {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(specs: &[&str]) -> Policy {
        Policy::new(specs.iter().map(|s| Grant::parse(s, "--allow-outbound").unwrap()).collect::<Vec<_>>().into())
    }

    #[tokio::test]
    async fn addresses_blocks_and_ports_must_all_match() {
        let p = policy(&["10.1.2.3:5432", "192.168.0.0/16:6379", "[::1]:8080"]);
        assert!(p.allows("10.1.2.3:5432".parse().unwrap()).await);
        assert!(!p.allows("10.1.2.3:5433".parse().unwrap()).await);
        assert!(!p.allows("10.1.2.4:5432".parse().unwrap()).await);
        assert!(p.allows("192.168.77.1:6379".parse().unwrap()).await);
        assert!(!p.allows("192.169.0.1:6379".parse().unwrap()).await);
        assert!(p.allows("[::1]:8080".parse().unwrap()).await);
        // An IPv4-mapped IPv6 address is the IPv4 address.
        assert!(p.allows("[::ffff:10.1.2.3]:5432".parse().unwrap()).await);
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_a_special_address_is_not_enough() {
        // `localhost` resolves to loopback: refused unless loopback is granted.
        let p = policy(&["localhost:8080"]);
        assert!(!p.allows("127.0.0.1:8080".parse().unwrap()).await);
        let p = policy(&["localhost:8080", "127.0.0.1:8080"]);
        assert!(p.allows("127.0.0.1:8080".parse().unwrap()).await);
        // The metadata address, by no grant that does not name it: not by
        // "everything", not by a name.
        let p = policy(&["0.0.0.0/0:80", "metadata.google.internal:80"]);
        assert!(!p.allows("169.254.169.254:80".parse().unwrap()).await);
        assert!(p.allows("93.184.215.14:80".parse().unwrap()).await, "the wide block covers public addresses");
        let p = policy(&["169.254.169.254:80"]);
        assert!(p.allows("169.254.169.254:80".parse().unwrap()).await);
    }

    #[test]
    fn special_addresses_include_translated_and_reserved_ones() {
        let special = |s: &str| is_special(s.parse().unwrap());
        for ip in [
            // The metadata address and the private ranges, also mapped.
            "169.254.169.254",
            "10.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:127.0.0.3",
            // NAT64 and 6to4 stand for the IPv4 address they embed.
            "64:ff9b::a9fe:a9fe",
            "64:ff9b::808:808",
            "64:ff9b:1::a00:1",
            "2002:a9fe:a9fe::1",
            "2002:808:808::1",
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            // IPv4-compatible, deprecated.
            "::169.254.169.254",
            "::8.8.8.8",
            // Site-local, documentation, discard.
            "fec0::1",
            "feff::1",
            "2001:db8::1",
            "100::1",
            // IPv4 ranges that are not the public Internet.
            "192.0.0.1",
            "192.0.0.170",
            "192.88.99.1",
            "198.18.0.1",
            "198.19.255.255",
            "240.0.0.1",
            "255.255.255.254",
            "0.1.2.3",
            "100.64.0.1",
        ] {
            assert!(special(ip), "{ip} passed as an ordinary address");
        }
        for ip in
            ["8.8.8.8", "93.184.215.14", "198.20.0.1", "192.0.1.1", "2606:4700::1111", "2003::1", "::ffff:8.8.8.8"]
        {
            assert!(!special(ip), "{ip} is an ordinary address");
        }
    }

    #[tokio::test]
    async fn a_translated_address_needs_a_grant_of_its_own() {
        // The widest blocks cover only public addresses; no name reaches
        // the metadata address through NAT64 or 6to4.
        let p = policy(&["0.0.0.0/0:80", "[::/0]:80", "metadata.google.internal:80"]);
        for ip in ["[64:ff9b::a9fe:a9fe]:80", "[2002:a9fe:a9fe::1]:80", "[::169.254.169.254]:80", "[fec0::1]:80"] {
            assert!(!p.allows(ip.parse().unwrap()).await, "{ip}");
        }
        assert!(p.allows("[2606:4700::1111]:80".parse().unwrap()).await);
        let p = policy(&["[64:ff9b::/96]:80"]);
        assert!(p.allows("[64:ff9b::a9fe:a9fe]:80".parse().unwrap()).await, "granted by its own block");
    }

    #[test]
    fn only_granted_names_resolve() {
        let p = policy(&["DB.internal.:5432", "10.0.0.1:80"]);
        assert!(p.may_resolve("db.internal") && p.may_resolve("db.INTERNAL."));
        assert!(p.may_resolve("10.9.9.9"), "a literal resolves to itself and is checked at connect");
        assert!(!p.may_resolve("evil.example"));
    }

    #[test]
    fn grants_parse_or_say_what_is_wrong() {
        assert_eq!(Grant::parse("db:5432", "k").unwrap().target, Target::Name("db".into()));
        assert_eq!(Grant::parse("10.0.0.0/8:1", "k").unwrap().target, Target::Block("10.0.0.0".parse().unwrap(), 8));
        for bad in ["db", "db:0", "db:70000", "10.0.0.0/33:1", "[::1:80", "bad host:80", ":80", "a..b:1"] {
            assert!(Grant::parse(bad, "--allow-outbound").is_err(), "{bad}");
        }
    }
}
