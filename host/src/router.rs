//! Which app a request is for: by `UWSGI_APPID`, or by host and path.
//!
//! Hosts are tried from the most specific: an exact name, then the longest
//! `*.` wildcard that matches, then the apps that name no host (the
//! catch-all). Within a group the longest `prefix` that matches at a
//! path-segment boundary wins (`/blog` takes `/blog` and `/blog/x`, not
//! `/blogger`); a group where no prefix matches falls through to the next.
//! Host names are compared in lowercase, without a port or a trailing dot.
//!
//! The table is built once per config and never changed: a reload builds a
//! new one.

use std::collections::HashMap;

use anyhow::{bail, Result};

/// Where one app is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Exact names and `*.suffix` wildcards; empty for a catch-all.
    pub hosts: Vec<String>,
    /// `/` or a path without a trailing slash, such as `/blog`.
    pub prefix: String,
}

/// The routing table for apps of type `A`.
pub struct Router<A> {
    exact: HashMap<String, Vec<(String, usize)>>,
    /// `(".shop.example.com", prefixes)`, longest suffix first.
    wildcards: Vec<(String, Vec<(String, usize)>)>,
    catch_all: Vec<(String, usize)>,
    by_name: HashMap<String, usize>,
    apps: Vec<(String, A)>,
}

/// A routed request: the app and the prefix it is mounted at.
#[derive(Debug)]
pub struct Routed<'a, A> {
    pub name: &'a str,
    pub app: &'a A,
    /// `""` for an app at `/`; else the prefix, which becomes `SCRIPT_NAME`.
    pub prefix: &'a str,
}

impl<A> Router<A> {
    /// Builds the table.
    ///
    /// # Errors
    /// Two apps that claim the same host (or both no host) and the same
    /// prefix, or a host or prefix that is malformed.
    pub fn new(apps: Vec<(String, Mount, A)>) -> Result<Self> {
        let mut router = Self {
            exact: HashMap::new(),
            wildcards: Vec::new(),
            catch_all: Vec::new(),
            by_name: HashMap::new(),
            apps: Vec::new(),
        };
        let mut claimed: HashMap<(String, String), String> = HashMap::new();
        for (index, (name, mount, app)) in apps.into_iter().enumerate() {
            let prefix = normalize_prefix(&mount.prefix)
                .ok_or_else(|| anyhow::anyhow!("[apps.{name}] prefix {:?}: must start with /", mount.prefix))?;
            let hosts = if mount.hosts.is_empty() { vec![String::new()] } else { mount.hosts.clone() };
            for host in hosts {
                let host = host.to_ascii_lowercase();
                if !host.is_empty() && !valid_host_pattern(&host) {
                    bail!("[apps.{name}] hosts: {host:?} is not a host name or a *.wildcard");
                }
                if let Some(other) = claimed.insert((host.clone(), prefix.clone()), name.clone()) {
                    let host = if host.is_empty() { "no host (catch-all)".to_owned() } else { host };
                    bail!("[apps.{other}] and [apps.{name}] both claim {host} with prefix {prefix:?}");
                }
                let group = if host.is_empty() {
                    &mut router.catch_all
                } else if let Some(suffix) = host.strip_prefix('*') {
                    let at = match router.wildcards.iter().position(|(s, _)| *s == suffix) {
                        Some(at) => at,
                        None => {
                            router.wildcards.push((suffix.to_owned(), Vec::new()));
                            router.wildcards.len() - 1
                        }
                    };
                    &mut router.wildcards[at].1
                } else {
                    router.exact.entry(host).or_default()
                };
                group.push((prefix.clone(), index));
            }
            router.by_name.insert(name.clone(), index);
            router.apps.push((name, app));
        }
        router.wildcards.sort_by_key(|(suffix, _)| std::cmp::Reverse(suffix.len()));
        let longest_first = |g: &mut Vec<(String, usize)>| g.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        router.exact.values_mut().for_each(longest_first);
        router.wildcards.iter_mut().for_each(|(_, g)| longest_first(g));
        longest_first(&mut router.catch_all);
        Ok(router)
    }

    /// The app for `host` (a `Host` header or `SERVER_NAME`) and `path`
    /// (`PATH_INFO`), if any.
    pub fn route(&self, host: Option<&[u8]>, path: &[u8]) -> Option<Routed<'_, A>> {
        let host = host.map(normalize_host).unwrap_or_default();
        let exact = self.exact.get(&host).into_iter();
        let wild = self.wildcards.iter().filter(|(suffix, _)| host.ends_with(suffix.as_str())).map(|(_, g)| g);
        exact.chain(wild).chain(std::iter::once(&self.catch_all)).find_map(|group| {
            let (prefix, index) = group.iter().find(|(prefix, _)| under(path, prefix))?;
            Some(self.routed(*index, prefix))
        })
    }

    /// The app named `name` (`UWSGI_APPID`), with its own prefix.
    pub fn by_name(&self, name: &str) -> Option<Routed<'_, A>> {
        let index = *self.by_name.get(name)?;
        let prefix = self.prefix_of(index);
        Some(self.routed(index, prefix))
    }

    /// Every app, in config order.
    pub fn apps(&self) -> impl Iterator<Item = (&str, &A)> {
        self.apps.iter().map(|(name, app)| (name.as_str(), app))
    }

    fn prefix_of(&self, index: usize) -> &str {
        let groups = self.exact.values().chain(self.wildcards.iter().map(|(_, g)| g)).chain([&self.catch_all]);
        groups.flatten().find(|(_, i)| *i == index).map_or("/", |(p, _)| p.as_str())
    }

    fn routed<'a>(&'a self, index: usize, prefix: &'a str) -> Routed<'a, A> {
        let (name, app) = &self.apps[index];
        Routed { name, app, prefix: if prefix == "/" { "" } else { prefix } }
    }
}

/// Whether `path` is `prefix` or below it at a segment boundary.
pub fn under(path: &[u8], prefix: &str) -> bool {
    prefix == "/" || path.strip_prefix(prefix.as_bytes()).is_some_and(|rest| rest.is_empty() || rest.starts_with(b"/"))
}

/// `/blog/` → `/blog`; `None` for one that does not start with `/`.
fn normalize_prefix(prefix: &str) -> Option<String> {
    if !prefix.starts_with('/') {
        return None;
    }
    let trimmed = prefix.trim_end_matches('/');
    Some(if trimmed.is_empty() { "/".to_owned() } else { trimmed.to_owned() })
}

/// `Shop.Example.COM:8080` → `shop.example.com`; `[::1]:80` → `[::1]`.
fn normalize_host(host: &[u8]) -> String {
    let host = String::from_utf8_lossy(host).to_ascii_lowercase();
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        host.split_inclusive(']').next().unwrap_or(host)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    without_port.trim_end_matches('.').to_owned()
}

fn valid_host_pattern(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && !name.contains('*')
        && name.split('.').all(|label| {
            !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        || (host.starts_with('[') && host.ends_with(']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mount(hosts: &[&str], prefix: &str) -> Mount {
        Mount { hosts: hosts.iter().map(|h| (*h).to_owned()).collect(), prefix: prefix.into() }
    }

    fn table() -> Router<&'static str> {
        Router::new(vec![
            ("shop".into(), mount(&["shop.example.com", "*.shop.example.com"], "/"), "shop"),
            ("shop-api".into(), mount(&["api.shop.example.com"], "/"), "shop-api"),
            ("deep".into(), mount(&["*.eu.shop.example.com"], "/"), "deep"),
            ("blog".into(), mount(&["example.com"], "/blog"), "blog"),
            ("site".into(), mount(&["example.com"], "/"), "site"),
            ("docs".into(), mount(&[], "/docs/"), "docs"),
            ("default".into(), mount(&[], "/"), "default"),
        ])
        .unwrap()
    }

    fn app(router: &Router<&'static str>, host: &str, path: &str) -> (&'static str, String) {
        let r = router.route(Some(host.as_bytes()), path.as_bytes()).expect("routed");
        (*r.app, r.prefix.to_owned())
    }

    #[test]
    fn an_exact_host_beats_a_wildcard_and_the_longest_wildcard_wins() {
        let t = table();
        assert_eq!(app(&t, "shop.example.com", "/").0, "shop");
        assert_eq!(app(&t, "api.shop.example.com", "/").0, "shop-api");
        assert_eq!(app(&t, "www.shop.example.com", "/").0, "shop");
        assert_eq!(app(&t, "a.b.shop.example.com", "/").0, "shop");
        assert_eq!(app(&t, "x.eu.shop.example.com", "/").0, "deep");
        // `*.eu.shop.example.com` does not match the bare name, which is
        // under `*.shop.example.com`.
        assert_eq!(app(&t, "eu.shop.example.com", "/").0, "shop");
        assert_eq!(app(&t, "other.org", "/").0, "default");
    }

    #[test]
    fn hosts_match_without_case_port_or_trailing_dot() {
        let t = table();
        for host in ["SHOP.Example.com", "shop.example.com:8080", "shop.example.com.", " shop.example.com"] {
            assert_eq!(app(&t, host, "/").0, "shop", "{host}");
        }
        let r = t.route(None, b"/").unwrap();
        assert_eq!(*r.app, "default", "no Host at all");
        assert_eq!(normalize_host(b"[::1]:8000"), "[::1]");
    }

    #[test]
    fn prefixes_match_at_segment_boundaries_longest_first() {
        let t = table();
        assert_eq!(app(&t, "example.com", "/blog"), ("blog", "/blog".into()));
        assert_eq!(app(&t, "example.com", "/blog/"), ("blog", "/blog".into()));
        assert_eq!(app(&t, "example.com", "/blog/2026/x"), ("blog", "/blog".into()));
        assert_eq!(app(&t, "example.com", "/blogger"), ("site", String::new()));
        assert_eq!(app(&t, "example.com", "/"), ("site", String::new()));
        // The catch-all group has its own prefixes; `/docs/` is `/docs`.
        assert_eq!(app(&t, "any.org", "/docs/x"), ("docs", "/docs".into()));
        assert_eq!(app(&t, "any.org", "/docsx"), ("default", String::new()));
    }

    #[test]
    fn a_host_group_with_no_matching_prefix_falls_through() {
        let t = Router::new(vec![
            ("blog".into(), mount(&["example.com"], "/blog"), "blog"),
            ("landing".into(), mount(&[], "/"), "landing"),
        ])
        .unwrap();
        assert_eq!(app(&t, "example.com", "/about").0, "landing");
        let only = Router::new(vec![("blog".into(), mount(&["example.com"], "/blog"), "blog")]).unwrap();
        assert!(only.route(Some(b"example.com"), b"/about").is_none());
        assert!(only.route(Some(b"other.com"), b"/blog").is_none());
    }

    #[test]
    fn an_app_is_chosen_by_name_with_its_prefix() {
        let t = table();
        let r = t.by_name("blog").unwrap();
        assert_eq!((*r.app, r.prefix), ("blog", "/blog"));
        assert_eq!(t.by_name("shop").unwrap().prefix, "");
        assert!(t.by_name("nope").is_none());
    }

    #[test]
    fn two_apps_may_not_claim_the_same_host_and_prefix() {
        let err =
            Router::new(vec![("a".into(), mount(&["x.com"], "/p"), ()), ("b".into(), mount(&["X.com"], "/p/"), ())])
                .err()
                .unwrap();
        assert!(err.to_string().contains("[apps.a] and [apps.b] both claim x.com"), "{err}");
        let err =
            Router::new(vec![("a".into(), mount(&[], "/"), ()), ("b".into(), mount(&[], "/"), ())]).err().unwrap();
        assert!(err.to_string().contains("catch-all"), "{err}");
        // The same host at another prefix, or another host at the same, is fine.
        Router::new(vec![("a".into(), mount(&["x.com"], "/"), ()), ("b".into(), mount(&["x.com"], "/b"), ())]).unwrap();
        for bad in ["*", "a.*.com", "bad host", "*."] {
            assert!(Router::new(vec![("a".into(), mount(&[bad], "/"), ())]).is_err(), "{bad}");
        }
        assert!(Router::new(vec![("a".into(), mount(&[], "blog"), ())]).is_err());
    }
}
