//! Passive health: endpoints that keep failing are taken out of rotation
//! for a while, judged only by the requests they already get (no probes).
//!
//! - A *failure* is an exchange that ended before a response head arrived
//!   because of the endpoint: connection refused, connect or response
//!   timeout, reset or close. Any response head, 5xx included, is a
//!   *success*. What the client causes (a stalled or aborted request body)
//!   is neither.
//! - After [`PassiveHealthConfig::failures`] failures in a row the endpoint
//!   is *ejected* for [`PassiveHealthConfig::backoff`]. When that ends it is
//!   back in rotation on probation: its first failure ejects it again, for
//!   twice as long as the last time, up to
//!   [`PassiveHealthConfig::max_backoff`]; its first success ends the
//!   probation and resets the back-off.
//! - While an endpoint is ejected, [`Backend::pick`](super::table::Backend::pick)
//!   skips it, unless every endpoint of the route is ejected: then it picks
//!   among them anyway, since a request that may fail beats a certain 503.
//!
//! The state of an endpoint is keyed by its address and kept by the
//! [`HealthRegistry`] of the [`RouteStore`](super::RouteStore): every route
//! that lists the address shares it, and it survives route-table swaps, so
//! an unrelated change (an EndpointSlice update elsewhere, a new Ingress)
//! does not send traffic back to a dead endpoint. An address that leaves
//! the table in force loses its state.
//!
//! The request path only reads and writes a few atomics: no lock, no
//! allocation. Ending an ejection (and the metrics around it) is the
//! proxy's business; this module only says when.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// When endpoints are ejected and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealthConfig {
    /// Consecutive failures that eject an endpoint; 0 turns ejection off.
    pub failures: u32,
    /// Length of a first ejection; each further ejection without a success
    /// in between doubles it.
    pub backoff: Duration,
    /// The longest an ejection lasts.
    pub max_backoff: Duration,
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        Self {
            failures: 3,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
        }
    }
}

impl PassiveHealthConfig {
    /// The length of an ejection that follows `streak` earlier ones.
    pub fn backoff_after(&self, streak: u32) -> Duration {
        let factor = 1u32 << streak.min(16);
        self.backoff
            .saturating_mul(factor)
            .min(self.max_backoff.max(self.backoff))
            .max(Duration::from_millis(1))
    }
}

/// Milliseconds on a process-wide monotonic clock; never 0.
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let ms = EPOCH.get_or_init(Instant::now).elapsed().as_millis();
    u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1
}

/// A clock reading taken at most once, and only when needed.
#[derive(Default)]
pub struct LazyNow(Option<u64>);

impl LazyNow {
    fn get(&mut self) -> u64 {
        *self.0.get_or_insert_with(now_ms)
    }
}

/// The health of one endpoint address.
#[derive(Debug, Default)]
pub struct EndpointHealth {
    /// Failures since the last success or ejection.
    failures: AtomicU32,
    /// Ejections since the last success; non-zero means on probation.
    streak: AtomicU32,
    /// When the current ejection ends ([`now_ms`] clock); 0 when the
    /// endpoint is not ejected. Between its end and the proxy calling
    /// [`EndpointHealth::end_ejection`] the endpoint is already picked
    /// again, but cannot be ejected anew.
    ejected_until: AtomicU64,
}

/// An ejection that just began. The proxy must call
/// [`EndpointHealth::end_ejection`] with it once `duration` has passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an ejection must be ended by the proxy"]
pub struct Ejection {
    pub duration: Duration,
    until: u64,
}

impl EndpointHealth {
    /// Whether the endpoint is out of rotation now.
    pub fn is_ejected(&self, now: &mut LazyNow) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && until > now.get()
    }

    /// A response head arrived from the endpoint.
    pub fn record_success(&self) {
        // Loads first: the usual case (nothing to reset) writes nothing,
        // so busy endpoints do not bounce a cache line between cores.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.streak.load(Ordering::Relaxed) != 0 {
            self.streak.store(0, Ordering::Relaxed);
        }
    }

    /// The endpoint failed an exchange. Returns the ejection it caused,
    /// if any; concurrent failures eject it at most once.
    pub fn record_failure(&self, config: &PassiveHealthConfig) -> Option<Ejection> {
        self.record_failure_at(now_ms(), config)
    }

    fn record_failure_at(&self, now: u64, config: &PassiveHealthConfig) -> Option<Ejection> {
        if config.failures == 0 || self.ejected_until.load(Ordering::Relaxed) != 0 {
            // Ejection is off, or the endpoint is already ejected (it was
            // picked because every endpoint is, or the request started
            // before the ejection).
            return None;
        }
        let streak = self.streak.load(Ordering::Relaxed);
        let threshold = if streak > 0 { 1 } else { config.failures };
        if self.failures.fetch_add(1, Ordering::Relaxed) + 1 < threshold {
            return None;
        }
        let duration = config.backoff_after(streak);
        let until = now.saturating_add(u64::try_from(duration.as_millis()).unwrap_or(u64::MAX));
        self.ejected_until
            .compare_exchange(0, until, Ordering::AcqRel, Ordering::Relaxed)
            .ok()?;
        self.failures.store(0, Ordering::Relaxed);
        self.streak
            .store(streak.saturating_add(1), Ordering::Relaxed);
        Some(Ejection { duration, until })
    }

    /// Ends `ejection`: the endpoint is on probation now. Returns false if
    /// it had ended already.
    pub fn end_ejection(&self, ejection: Ejection) -> bool {
        self.ejected_until
            .compare_exchange(ejection.until, 0, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    }
}

/// The health of every endpoint address in the table in force, kept
/// across swaps. Only compiling a table takes its lock.
#[derive(Debug, Default)]
pub struct HealthRegistry {
    endpoints: Mutex<HashMap<SocketAddr, Arc<EndpointHealth>>>,
}

impl HealthRegistry {
    /// Starts handing out state for a new table: addresses known before
    /// keep theirs; addresses the new table does not use are forgotten
    /// when the returned [`HealthGeneration`] is dropped.
    pub fn generation(&self) -> HealthGeneration<'_> {
        let previous = std::mem::take(&mut *self.lock());
        HealthGeneration {
            registry: self,
            previous,
            next: HashMap::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<EndpointHealth>>> {
        self.endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Number of addresses tracked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The state handed out while one table is compiled.
pub struct HealthGeneration<'a> {
    registry: &'a HealthRegistry,
    previous: HashMap<SocketAddr, Arc<EndpointHealth>>,
    next: HashMap<SocketAddr, Arc<EndpointHealth>>,
}

impl HealthGeneration<'_> {
    pub fn get(&mut self, addr: SocketAddr) -> Arc<EndpointHealth> {
        let previous = &mut self.previous;
        self.next
            .entry(addr)
            .or_insert_with(|| previous.remove(&addr).unwrap_or_default())
            .clone()
    }
}

impl Drop for HealthGeneration<'_> {
    fn drop(&mut self) {
        *self.registry.lock() = std::mem::take(&mut self.next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(failures: u32) -> PassiveHealthConfig {
        PassiveHealthConfig {
            failures,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
        }
    }

    fn ejected_at(health: &EndpointHealth, now: u64) -> bool {
        health.is_ejected(&mut LazyNow(Some(now)))
    }

    #[test]
    fn consecutive_failures_eject_and_a_success_in_between_resets_the_count() {
        let health = EndpointHealth::default();
        let c = config(3);
        assert_eq!(health.record_failure_at(1000, &c), None);
        assert_eq!(health.record_failure_at(1000, &c), None);
        health.record_success();
        assert_eq!(health.record_failure_at(1000, &c), None);
        assert_eq!(health.record_failure_at(1000, &c), None);
        assert!(!ejected_at(&health, 1000));
        let ejection = health.record_failure_at(1000, &c).expect("third failure");
        assert_eq!(ejection.duration, Duration::from_secs(10));
        assert!(ejected_at(&health, 1000));
        assert!(ejected_at(&health, 10_999));
        // Its time is up before the proxy ends it: picked again already.
        assert!(!ejected_at(&health, 11_000));
        // Failures while ejected do not eject it twice.
        assert_eq!(health.record_failure_at(2000, &c), None);
        assert!(health.end_ejection(ejection));
        assert!(!health.end_ejection(ejection));
    }

    #[test]
    fn on_probation_one_failure_ejects_again_for_twice_as_long_up_to_the_cap() {
        let health = EndpointHealth::default();
        let c = config(2);
        let mut now = 0;
        let mut durations = Vec::new();
        assert_eq!(health.record_failure_at(now, &c), None);
        for _ in 0..5 {
            let ejection = health.record_failure_at(now, &c).expect("ejected");
            durations.push(ejection.duration.as_secs());
            now += 1_000_000;
            assert!(health.end_ejection(ejection));
        }
        assert_eq!(durations, [10, 20, 40, 60, 60]);
        // A success ends the probation and resets the back-off.
        health.record_success();
        assert_eq!(health.record_failure_at(now, &c), None);
        let ejection = health.record_failure_at(now, &c).expect("ejected");
        assert_eq!(ejection.duration, Duration::from_secs(10));
    }

    #[test]
    fn zero_failures_turns_ejection_off() {
        let health = EndpointHealth::default();
        for _ in 0..100 {
            assert_eq!(health.record_failure_at(0, &config(0)), None);
        }
        assert!(!ejected_at(&health, 0));
    }

    #[test]
    fn backoff_doubles_and_saturates() {
        let c = PassiveHealthConfig::default();
        assert_eq!(c.backoff_after(0), Duration::from_secs(10));
        assert_eq!(c.backoff_after(1), Duration::from_secs(20));
        assert_eq!(c.backoff_after(5), Duration::from_secs(300));
        assert_eq!(c.backoff_after(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn the_registry_keeps_state_for_addresses_still_in_use_only() {
        let registry = HealthRegistry::default();
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let (first_a, first_b) = {
            let mut generation = registry.generation();
            let first_a = generation.get(a);
            assert!(Arc::ptr_eq(&first_a, &generation.get(a)));
            (first_a, generation.get(b))
        };
        assert_eq!(registry.len(), 2);
        let mut generation = registry.generation();
        assert!(Arc::ptr_eq(&first_a, &generation.get(a)));
        drop(generation);
        assert_eq!(registry.len(), 1);
        let mut generation = registry.generation();
        assert!(!Arc::ptr_eq(&first_b, &generation.get(b)));
    }
}
