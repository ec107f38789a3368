//! Limits per client address: how many connections one IP may hold open,
//! and how many requests per second it may make (a token bucket).
//!
//! Global flags set them today (`--max-connections-per-client`,
//! `--max-requests-per-client-per-second`, `--client-request-burst`); a
//! per-route policy can hold its own [`ClientLimits`] later and call the
//! same two checks.
//!
//! - **Key.** The client's IP address as the listener sees it (an
//!   IPv4-mapped IPv6 address counts as the IPv4 one), and for IPv6 its
//!   /64 prefix: one subscriber or one VM is handed a whole /64 and can
//!   pick a new address from it for every connection, so a limit per full
//!   address would not limit anybody. Behind a load balancer that hides
//!   client addresses, every client shares its address: that is why both
//!   limits are off by default.
//! - **Memory is bounded.** A client has an entry while it has a
//!   connection open or its bucket is not full again; no other entry
//!   exists. The last connection to close removes the entry if its bucket
//!   is full; otherwise the entry is swept once the bucket would have
//!   refilled (each shard sweeps itself at most once a second, when a new
//!   client arrives). So the map holds at most the open connections plus
//!   the clients that closed within the last `burst / rate` seconds.
//! - **The hot path is cheap.** The map is split into shards, each behind
//!   its own mutex, held for a lookup and a few arithmetic operations. A
//!   known client costs no allocation: its entry exists as long as its
//!   connection does, which holds a [`ClientSlot`].

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Shards of the map; a power of two.
const SHARDS: usize = 32;
/// How often a shard may sweep entries of clients that have gone.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// The limits themselves; 0 turns a limit off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientLimitConfig {
    /// Connections one address may have open at once.
    pub max_connections: u32,
    /// Requests per second one address may make on average.
    pub requests_per_second: u32,
    /// Requests one address may make at once; 0 means the rate (at least 1).
    pub burst: u32,
}

impl ClientLimitConfig {
    pub fn is_off(&self) -> bool {
        self.max_connections == 0 && self.requests_per_second == 0
    }

    fn bucket_size(&self) -> f64 {
        let burst = if self.burst == 0 {
            self.requests_per_second
        } else {
            self.burst
        };
        f64::from(burst.max(1))
    }
}

/// One client address.
#[derive(Debug)]
struct Client {
    connections: u32,
    /// Requests it may make now (the bucket's level).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

#[derive(Debug)]
struct Shard {
    clients: HashMap<IpAddr, Client>,
    next_sweep: Instant,
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Connections,
    Requests,
}

impl Refusal {
    /// The `limit` label of `switchyard_client_limit_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Connections => "connections",
            Self::Requests => "requests",
        }
    }
}

/// The state of every client address under one set of limits.
#[derive(Debug)]
pub struct ClientLimits {
    config: ClientLimitConfig,
    /// Token refill per second, and the bucket's size.
    rate: f64,
    bucket: f64,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

impl ClientLimits {
    pub fn new(config: ClientLimitConfig) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            config,
            rate: f64::from(config.requests_per_second),
            bucket: config.bucket_size(),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        clients: HashMap::new(),
                        next_sweep: now + SWEEP_INTERVAL,
                    })
                })
                .collect(),
        })
    }

    pub fn config(&self) -> ClientLimitConfig {
        self.config
    }

    fn shard(&self, ip: &IpAddr) -> MutexGuard<'_, Shard> {
        let index = self.hasher.hash_one(ip) as usize & (SHARDS - 1);
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A new connection from `ip`: a slot to hold while it is open, or
    /// [`Refusal::Connections`]. With both limits off, an empty slot.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Result<ClientSlot, Refusal> {
        if self.config.is_off() {
            return Ok(ClientSlot(None));
        }
        let ip = client_key(ip);
        let now = Instant::now();
        let mut shard = self.shard(&ip);
        if now >= shard.next_sweep && !shard.clients.contains_key(&ip) {
            shard.next_sweep = now + SWEEP_INTERVAL;
            shard.clients.retain(|_, client| !self.is_idle(client, now));
        }
        let bucket = self.bucket;
        let client = shard.clients.entry(ip).or_insert(Client {
            connections: 0,
            tokens: bucket,
            updated: now,
        });
        if self.config.max_connections != 0 && client.connections >= self.config.max_connections {
            return Err(Refusal::Connections);
        }
        client.connections += 1;
        Ok(ClientSlot(Some((self.clone(), ip))))
    }

    /// A request from `ip`: takes a token from its bucket, or
    /// [`Refusal::Requests`] when it is empty.
    pub fn request(&self, ip: IpAddr) -> Result<(), Refusal> {
        if self.config.requests_per_second == 0 {
            return Ok(());
        }
        let ip = client_key(ip);
        let now = Instant::now();
        let mut shard = self.shard(&ip);
        // The connection's slot keeps the entry; inserting is for a caller
        // without one (a request checked apart from its connection).
        let bucket = self.bucket;
        let client = shard.clients.entry(ip).or_insert(Client {
            connections: 0,
            tokens: bucket,
            updated: now,
        });
        self.refill(client, now);
        if client.tokens < 1.0 {
            return Err(Refusal::Requests);
        }
        client.tokens -= 1.0;
        Ok(())
    }

    fn refill(&self, client: &mut Client, now: Instant) {
        let elapsed = now.saturating_duration_since(client.updated).as_secs_f64();
        client.tokens = (client.tokens + elapsed * self.rate).min(self.bucket);
        client.updated = now;
    }

    /// No connection open and a full bucket (by `now`): nothing to remember.
    fn is_idle(&self, client: &mut Client, now: Instant) -> bool {
        if client.connections != 0 {
            return false;
        }
        if self.config.requests_per_second == 0 {
            return true;
        }
        self.refill(client, now);
        client.tokens >= self.bucket
    }

    fn disconnect(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut shard = self.shard(&ip);
        if let Some(client) = shard.clients.get_mut(&ip) {
            client.connections = client.connections.saturating_sub(1);
            if self.is_idle(client, now) {
                shard.clients.remove(&ip);
            }
        }
    }

    /// Client addresses remembered now.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clients
                    .len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a client is counted by: its IPv4 address (an IPv4-mapped IPv6
/// address is one), or the /64 prefix of its IPv6 address.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((v6.to_bits() & !0u128 << 64).into()),
        v4 => v4,
    }
}

/// Held by a client connection while it is open; counts it against its
/// address.
#[derive(Debug)]
#[must_use = "the connection counts only while its slot is held"]
pub struct ClientSlot(Option<(Arc<ClientLimits>, IpAddr)>);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        if let Some((limits, ip)) = self.0.take() {
            limits.disconnect(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn limits(max_connections: u32, requests_per_second: u32, burst: u32) -> Arc<ClientLimits> {
        ClientLimits::new(ClientLimitConfig {
            max_connections,
            requests_per_second,
            burst,
        })
    }

    #[test]
    fn connections_are_limited_per_address_and_freed_on_drop() {
        let limits = limits(2, 0, 0);
        let a1 = limits.connect(ip("10.0.0.1")).unwrap();
        let _a2 = limits.connect(ip("10.0.0.1")).unwrap();
        assert_eq!(
            limits.connect(ip("10.0.0.1")).unwrap_err(),
            Refusal::Connections
        );
        // The mapped IPv6 form is the same client.
        assert!(limits.connect(ip("::ffff:10.0.0.1")).is_err());
        let _b = limits.connect(ip("10.0.0.2")).unwrap();
        drop(a1);
        let _a3 = limits.connect(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn ipv6_clients_are_counted_per_64_prefix() {
        let limits = limits(1, 0, 0);
        let _a = limits.connect(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            limits.connect(ip("2001:db8:1:2:ffff:0:0:9")).unwrap_err(),
            Refusal::Connections,
            "another address of the same /64"
        );
        let _b = limits.connect(ip("2001:db8:1:3::1")).unwrap();
        assert_eq!(limits.len(), 2);
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        // One a second: a stall of the test thread inside the burst
        // cannot refill a token before the fourth request.
        let limits = limits(0, 1, 3);
        let _slot = limits.connect(ip("10.0.0.1")).unwrap();
        for _ in 0..3 {
            limits.request(ip("10.0.0.1")).unwrap();
        }
        assert_eq!(
            limits.request(ip("10.0.0.1")).unwrap_err(),
            Refusal::Requests
        );
        limits.request(ip("10.0.0.2")).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        limits.request(ip("10.0.0.1")).unwrap();
    }

    #[test]
    fn entries_go_when_the_last_connection_closes_with_a_full_bucket() {
        let limits = limits(5, 0, 0);
        let slots: Vec<_> = (0..100)
            .map(|i| limits.connect(IpAddr::from([10, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(limits.len(), 100);
        drop(slots);
        assert!(limits.is_empty());
    }

    #[test]
    fn entries_with_a_spent_bucket_are_swept_once_it_has_refilled() {
        let limits = limits(0, 1000, 1);
        for i in 0..=255 {
            let client = IpAddr::from([10, 0, 1, i]);
            let slot = limits.connect(client).unwrap();
            limits.request(client).unwrap();
            drop(slot);
        }
        // Buckets are spent: the entries stay for now.
        assert!(!limits.is_empty());
        std::thread::sleep(SWEEP_INTERVAL + Duration::from_millis(50));
        // New clients make each shard sweep: 1024 addresses reach all 32
        // shards (a shard missed has a chance of 32 * (31/32)^1024 < 1e-12).
        let slots: Vec<_> = (0..1024u32)
            .map(|i| {
                limits
                    .connect(IpAddr::from(std::net::Ipv4Addr::from(
                        (10 << 24) | (3 << 16) | i,
                    )))
                    .unwrap()
            })
            .collect();
        assert_eq!(limits.len(), 1024);
        // Their buckets are full: the last connection removes each entry.
        drop(slots);
        assert!(limits.is_empty());
    }

    #[test]
    fn with_both_limits_off_nothing_is_remembered() {
        let limits = limits(0, 0, 0);
        let _slot = limits.connect(ip("10.0.0.1")).unwrap();
        limits.request(ip("10.0.0.1")).unwrap();
        assert!(limits.is_empty());
    }
}
