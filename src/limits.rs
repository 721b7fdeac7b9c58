//! Connection limits and rate limits.
//!
//! - [`ConnLimits`]: open streams on this node — in all, per user, per client address. A
//!   [`ConnPermit`] holds one place and gives it back when dropped, so a stream that ends for
//!   any reason frees its place. Counters of users and addresses with no stream left are
//!   removed, so the maps hold only what is open.
//! - [`SocketLimits`]: open connections of every kind (streams, requests, idle keep-alive)
//!   — in all and per peer address — checked when a connection is accepted, before a byte is
//!   read. A [`SocketPermit`] gives its place back when the connection ends.
//! - [`RateLimiter`]: token buckets by key (client address for new connections, publisher for
//!   publishes). A refusal says how long to wait (`Retry-After`). Buckets that have refilled
//!   are forgotten by [`RateLimiter::cleanup`] (run periodically), and the map never holds
//!   more than `max_keys` buckets: when full, new keys are refused rather than let memory grow.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::retry::lock;

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Connections,
    ConnectionsPerUser,
    ConnectionsPerIp,
    ConnectRate,
    PublishRate,
}

impl Limit {
    /// The stable error code (and metric label).
    pub fn code(self) -> &'static str {
        match self {
            Limit::Connections => "too_many_connections",
            Limit::ConnectionsPerUser => "too_many_connections_for_user",
            Limit::ConnectionsPerIp => "too_many_connections_from_address",
            Limit::ConnectRate => "connection_rate_limited",
            Limit::PublishRate => "publish_rate_limited",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Limit::Connections => "this server has reached its connection limit; retry later",
            Limit::ConnectionsPerUser => {
                "you have too many open streams; close some (one stream per tab is enough)"
            }
            Limit::ConnectionsPerIp => "too many open streams from your address; retry later",
            Limit::ConnectRate => "too many new connections from your address; slow down",
            Limit::PublishRate => "too many events published; slow down",
        }
    }
}

/// A refusal: which limit, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub limit: Limit,
    pub retry_after_s: u64,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    users: HashMap<Arc<str>, usize>,
    ips: HashMap<IpAddr, usize>,
}

/// Open-stream limits of this node.
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    max_per_user: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_user: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_user,
            max_per_ip,
            counts: Mutex::default(),
        })
    }

    /// Takes a place for a stream of `user` from `ip`, or says which limit is reached.
    pub fn acquire(self: &Arc<Self>, user: &str, ip: IpAddr) -> Result<ConnPermit, Refused> {
        let mut c = lock(&self.counts);
        let refuse = |limit| {
            Err(Refused {
                limit,
                retry_after_s: 5,
            })
        };
        if c.total >= self.max_total {
            return refuse(Limit::Connections);
        }
        if c.users.get(user).copied().unwrap_or(0) >= self.max_per_user {
            return refuse(Limit::ConnectionsPerUser);
        }
        if c.ips.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return refuse(Limit::ConnectionsPerIp);
        }
        let user: Arc<str> = Arc::from(user);
        c.total += 1;
        *c.users.entry(user.clone()).or_default() += 1;
        *c.ips.entry(ip).or_default() += 1;
        Ok(ConnPermit {
            limits: self.clone(),
            user,
            ip,
        })
    }

    pub fn open(&self) -> usize {
        lock(&self.counts).total
    }
}

/// One stream's place; given back when dropped.
#[derive(Debug)]
pub struct ConnPermit {
    limits: Arc<ConnLimits>,
    user: Arc<str>,
    ip: IpAddr,
}

impl Drop for ConnPermit {
    fn drop(&mut self) {
        let mut c = lock(&self.limits.counts);
        c.total -= 1;
        if let Some(n) = c.users.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                c.users.remove(&self.user);
            }
        }
        if let Some(n) = c.ips.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.ips.remove(&self.ip);
            }
        }
    }
}

/// Which cap closed a connection at accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SocketCap {
    Total,
    PerIp,
}

impl SocketCap {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            SocketCap::Total => "total",
            SocketCap::PerIp => "per_ip",
        }
    }
}

/// Open connections of every kind on one listener: at most `max_total`, and at most
/// `max_per_ip` (never more than half of `max_total`) from one peer address, so that one
/// address holding connections open cannot take the places of everyone else — health
/// checks and other clients' streams still get in. Peers in `exempt` (trusted proxies, which
/// carry many clients' connections) count only toward the total.
#[derive(Debug)]
pub struct SocketLimits {
    max_total: usize,
    max_per_ip: usize,
    exempt: Vec<crate::config::Cidr>,
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl SocketLimits {
    pub fn new(max_total: usize, max_per_ip: usize, exempt: Vec<crate::config::Cidr>) -> Arc<Self> {
        let max_total = max_total.max(2);
        Arc::new(Self {
            max_total,
            max_per_ip: max_per_ip.clamp(1, max_total / 2),
            exempt,
            counts: Mutex::default(),
        })
    }

    /// The node-wide cap when `limits.max_open_connections` is 0: the open-file limit less
    /// what the process needs besides connections (the log's files, engine and source
    /// connections, the listeners): a sixteenth of the limit, at least 64.
    pub fn default_total(open_files: u64) -> usize {
        let reserve = (open_files / 16).max(64);
        usize::try_from(open_files.saturating_sub(reserve))
            .unwrap_or(usize::MAX)
            .max(2)
    }

    /// The caps in force: (total, per address).
    pub fn caps(&self) -> (usize, usize) {
        (self.max_total, self.max_per_ip)
    }

    /// Takes a place for a connection from `ip`, or says which cap is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<SocketPermit, SocketCap> {
        let counted = !self.exempt.iter().any(|c| c.contains(ip));
        let mut c = lock(&self.counts);
        if c.0 >= self.max_total {
            return Err(SocketCap::Total);
        }
        if counted {
            let n = c.1.entry(ip).or_default();
            if *n >= self.max_per_ip {
                return Err(SocketCap::PerIp);
            }
            *n += 1;
        }
        c.0 += 1;
        Ok(SocketPermit {
            limits: self.clone(),
            ip: counted.then_some(ip),
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        lock(&self.counts).0
    }
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub struct SocketPermit {
    limits: Arc<SocketLimits>,
    ip: Option<IpAddr>,
}

impl Drop for SocketPermit {
    fn drop(&mut self) {
        let mut c = lock(&self.limits.counts);
        c.0 -= 1;
        if let Some(ip) = self.ip {
            if let Some(n) = c.1.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.1.remove(&ip);
                }
            }
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by key: `rate` tokens per second, at most `burst` saved up.
pub struct RateLimiter<K> {
    limit: Limit,
    rate: f64,
    burst: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<K, Bucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(limit: Limit, rate: f64, burst: u32, max_keys: usize) -> Self {
        Self {
            limit,
            rate,
            burst: f64::from(burst),
            max_keys,
            buckets: Mutex::default(),
        }
    }

    /// Takes `cost` tokens from `key`'s bucket, or says how long until they are there.
    /// A rate of 0 means no limit.
    pub fn check(&self, key: &K, cost: u32) -> Result<(), Refused> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        let cost = f64::from(cost);
        let now = Instant::now();
        let mut buckets = lock(&self.buckets);
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            self.forget_full(&mut buckets, now);
            if buckets.len() >= self.max_keys {
                return Err(Refused {
                    limit: self.limit,
                    retry_after_s: 1,
                });
            }
        }
        let b = buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + (now - b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            return Ok(());
        }
        let wait_s = (cost - b.tokens) / self.rate;
        Err(Refused {
            limit: self.limit,
            retry_after_s: (wait_s.ceil() as u64).max(1),
        })
    }

    fn forget_full(&self, buckets: &mut HashMap<K, Bucket>, now: Instant) {
        buckets.retain(|_, b| b.tokens + (now - b.at).as_secs_f64() * self.rate < self.burst);
    }

    /// Forgets buckets that have refilled (they behave exactly like new ones).
    pub fn cleanup(&self) {
        let now = Instant::now();
        self.forget_full(&mut lock(&self.buckets), now);
    }

    pub fn len(&self) -> usize {
        lock(&self.buckets).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn connection_places_are_counted_and_given_back() {
        let l = ConnLimits::new(3, 2, 10);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let a1 = l.acquire("a", ip).unwrap();
        let _a2 = l.acquire("a", ip).unwrap();
        assert_eq!(
            l.acquire("a", ip).unwrap_err().limit,
            Limit::ConnectionsPerUser
        );
        let _b = l.acquire("b", ip).unwrap();
        assert_eq!(l.acquire("c", ip).unwrap_err().limit, Limit::Connections);
        drop(a1);
        assert!(l.acquire("a", ip).is_ok());
    }

    #[test]
    fn one_address_gets_at_most_half_of_the_sockets_and_proxies_only_count_in_total() {
        let proxy: crate::config::Cidr = "10.0.0.0/8".parse().unwrap();
        let l = SocketLimits::new(6, 100, vec![proxy]);
        assert_eq!(l.caps(), (6, 3), "per address: at most half the total");
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| l.admit(a).unwrap()).collect();
        assert_eq!(l.admit(a).unwrap_err(), SocketCap::PerIp);
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let _b = l.admit(b).unwrap();
        let p: IpAddr = "10.1.2.3".parse().unwrap();
        let _p1 = l.admit(p).unwrap();
        let _p2 = l.admit(p).unwrap();
        assert_eq!(l.admit(p).unwrap_err(), SocketCap::Total);
        assert_eq!(l.open(), 6);
        drop(held);
        assert_eq!(l.open(), 3);
        assert!(l.admit(a).is_ok(), "places are given back");
        assert_eq!(SocketLimits::default_total(256), 192);
        assert_eq!(SocketLimits::default_total(20_000), 18_750);
    }

    #[tokio::test(start_paused = true)]
    async fn buckets_refill_and_are_forgotten_when_full() {
        let r = RateLimiter::new(Limit::ConnectRate, 2.0, 3, 100);
        for _ in 0..3 {
            r.check(&1u32, 1).unwrap();
        }
        let refused = r.check(&1u32, 1).unwrap_err();
        assert_eq!(refused.retry_after_s, 1);
        tokio::time::advance(Duration::from_millis(500)).await;
        r.check(&1u32, 1).unwrap();
        assert!(r.check(&1u32, 1).is_err());
        tokio::time::advance(Duration::from_secs(2)).await;
        r.cleanup();
        assert!(r.is_empty(), "a refilled bucket is forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn the_key_map_is_bounded() {
        let r = RateLimiter::new(Limit::ConnectRate, 1.0, 2, 2);
        r.check(&1u32, 1).unwrap();
        r.check(&2u32, 1).unwrap();
        assert!(r.check(&3u32, 1).is_err(), "full of busy buckets");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(r.check(&3u32, 1).is_ok(), "refilled buckets make room");
    }
}
