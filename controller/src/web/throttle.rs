//! Login throttling: failed logins counted per client address and per user name in a
//! sliding window; past the limit, logins are answered 429 until the oldest failure
//! leaves the window.
//!
//! Only failures count, and a refused attempt is not one (its password is never
//! checked): so an address that guesses is stopped after a few tries, while the user
//! it guesses for, logging in from elsewhere, is stopped only by a guessing campaign
//! spread over many addresses (the per-user limit is the looser one). Rate-limiting
//! crates count every call; this needs "peek, then count failures only".

use mai_fleet_core::Invalid;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A limit: `max` failures within `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: usize,
    pub window: Duration,
}

impl Limit {
    /// `10/15m`: ten failures in fifteen minutes.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let (max, window) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}`: write failures/window, e.g. 10/15m"))?;
        let max = max
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("`{text}`: the count must be a whole number above 0"))?;
        let window = crate::duration::parse(window.trim()).map_err(|e| format!("`{text}`: {e}"))?;
        Ok(Self { max, window })
    }
}

/// The limits of one dashboard.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub per_address: Limit,
    pub per_user: Limit,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            per_address: Limit {
                max: 10,
                window: Duration::from_secs(15 * 60),
            },
            per_user: Limit {
                max: 50,
                window: Duration::from_secs(15 * 60),
            },
        }
    }
}

/// Most keys remembered per kind (addresses, user names): the memory of the throttle
/// is bounded whatever an attacker sends.
const MAX_KEYS: usize = 10_000;

/// User names are counted by their first 64 characters: a name of megabytes costs
/// what a short one does.
pub const MAX_NAME: usize = 64;

fn cut(name: &str) -> &str {
    name.char_indices()
        .nth(MAX_NAME)
        .map_or(name, |(at, _)| &name[..at])
}

/// Failures per key, least recently failed first out.
struct Window {
    failures: lru::LruCache<String, VecDeque<Instant>>,
}

impl Window {
    fn new(capacity: usize) -> Self {
        Self {
            failures: lru::LruCache::new(
                std::num::NonZeroUsize::new(capacity.max(1)).unwrap_or(std::num::NonZeroUsize::MIN),
            ),
        }
    }

    /// When the key may try again, if it may not now. A key not remembered while every
    /// remembered one still counts failures waits too: the throttle refuses rather
    /// than forget a live count (which would let its holder guess afresh).
    fn blocked(&mut self, key: &str, limit: Limit, now: Instant) -> Option<Duration> {
        let Some(list) = self.failures.peek_mut(key) else {
            return self.full_for(limit, now);
        };
        while list
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limit.window)
        {
            list.pop_front();
        }
        if list.is_empty() {
            self.failures.pop(key);
            return None;
        }
        (list.len() >= limit.max).then(|| {
            let oldest = list.front().copied().unwrap_or(now);
            limit.window.saturating_sub(now.duration_since(oldest))
        })
    }

    /// How long until the least recently failed key's count runs out, when the window
    /// is full and that count is still live.
    fn full_for(&mut self, limit: Limit, now: Instant) -> Option<Duration> {
        if self.failures.len() < self.failures.cap().get() {
            return None;
        }
        let last = self
            .failures
            .peek_lru()
            .and_then(|(_, l)| l.back().copied())?;
        let age = now.duration_since(last);
        if age >= limit.window {
            self.failures.pop_lru();
            return None;
        }
        Some(limit.window - age)
    }

    fn fail(&mut self, key: &str, limit: Limit, now: Instant) {
        if let Some(list) = self.failures.get_mut(key) {
            list.push_back(now);
            // Only the last `max` failures decide anything.
            while list.len() > limit.max {
                list.pop_front();
            }
            return;
        }
        if self.full_for(limit, now).is_some() {
            return;
        }
        self.failures.put(key.to_string(), VecDeque::from([now]));
    }
}

pub struct LoginThrottle {
    limits: Limits,
    addresses: Mutex<Window>,
    users: Mutex<Window>,
}

impl LoginThrottle {
    pub fn new(limits: Limits) -> Self {
        Self::with_capacity(limits, MAX_KEYS)
    }

    fn with_capacity(limits: Limits, capacity: usize) -> Self {
        Self {
            limits,
            addresses: Mutex::new(Window::new(capacity)),
            users: Mutex::new(Window::new(capacity)),
        }
    }

    /// `Err(retry after)` when this address or this user may not try now.
    pub fn check(&self, address: IpAddr, user: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let by_address =
            lock(&self.addresses).blocked(&address.to_string(), self.limits.per_address, now);
        let by_user = lock(&self.users).blocked(cut(user), self.limits.per_user, now);
        match by_address.into_iter().chain(by_user).max() {
            Some(wait) => Err(wait.max(Duration::from_secs(1))),
            None => Ok(()),
        }
    }

    pub fn failed(&self, address: IpAddr, user: &str) {
        let now = Instant::now();
        lock(&self.addresses).fail(&address.to_string(), self.limits.per_address, now);
        lock(&self.users).fail(cut(user), self.limits.per_user, now);
    }
}

/// A poisoned lock only means a thread panicked while counting: the counts are
/// still counts.
fn lock(m: &Mutex<Window>) -> std::sync::MutexGuard<'_, Window> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_stopped_before_the_user_is() {
        let t = LoginThrottle::new(Limits {
            per_address: Limit {
                max: 3,
                window: Duration::from_secs(60),
            },
            per_user: Limit {
                max: 5,
                window: Duration::from_secs(60),
            },
        });
        let (a, b, c) = (
            "127.0.0.3".parse().unwrap(),
            "127.0.0.4".parse().unwrap(),
            "127.0.0.5".parse().unwrap(),
        );
        for _ in 0..3 {
            assert!(t.check(a, "admin").is_ok());
            t.failed(a, "admin");
        }
        let wait = t.check(a, "admin").unwrap_err();
        assert!(wait > Duration::from_secs(50) && wait <= Duration::from_secs(60));
        assert!(t.check(b, "admin").is_ok(), "another address may try");
        t.failed(b, "admin");
        t.failed(b, "admin");
        assert!(
            t.check(c, "admin").is_err(),
            "five failures for one user from anywhere stop that user"
        );
        assert!(t.check(c, "ewa").is_ok());
    }

    #[test]
    fn memory_is_bounded_names_are_cut_and_a_full_throttle_refuses() {
        let limit = Limit {
            max: 2,
            window: Duration::from_secs(60),
        };
        let t = LoginThrottle::with_capacity(
            Limits {
                per_address: Limit { max: 1000, ..limit },
                per_user: limit,
            },
            3,
        );
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let huge = "x".repeat(2_000_000);
        t.failed(ip, &huge);
        t.failed(ip, &format!("{huge}y"));
        assert!(
            t.check(ip, &huge).is_err(),
            "both counted under the cut name"
        );
        assert_eq!(
            lock(&t.users).failures.peek_lru().map(|(k, _)| k.len()),
            Some(MAX_NAME)
        );
        t.failed(ip, "ewa");
        t.failed(ip, "jan");
        // Three live counts, room for three: a fourth name is refused, not counted
        // by forgetting one.
        assert!(t.check(ip, "olga").is_err());
        t.failed(ip, "olga");
        assert!(
            t.check(ip, &huge).is_err(),
            "the first count was not forgotten"
        );
        assert_eq!(lock(&t.users).failures.len(), 3);
    }

    #[test]
    fn limits_parse() {
        assert_eq!(
            Limit::parse("10/15m"),
            Ok(Limit {
                max: 10,
                window: Duration::from_secs(900)
            })
        );
        assert!(Limit::parse("0/1m").is_err());
        assert!(Limit::parse("10").is_err());
    }
}
