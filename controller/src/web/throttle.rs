//! Login throttling: failed logins counted per client address and per user name in a
//! sliding window; past the limit, logins are answered 429 until the oldest failure
//! leaves the window.
//!
//! Only failures count, and a refused attempt is not one (its password is never
//! checked): so an address that guesses is stopped after a few tries, while the user
//! it guesses for, logging in from elsewhere, is stopped only by a guessing campaign
//! spread over many addresses (the per-user limit is the looser one). Rate-limiting
//! crates count every call; this needs "peek, then count failures only".

use std::collections::{HashMap, VecDeque};
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
    pub fn parse(text: &str) -> Result<Self, String> {
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

/// Most keys remembered per kind: an attacker rotating user names cannot grow the
/// map without end (the oldest entries go first).
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
struct Window {
    failures: HashMap<String, VecDeque<Instant>>,
}

impl Window {
    /// When the key may try again, if it may not now.
    fn blocked(&mut self, key: &str, limit: Limit, now: Instant) -> Option<Duration> {
        let list = self.failures.get_mut(key)?;
        while list
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limit.window)
        {
            list.pop_front();
        }
        if list.is_empty() {
            self.failures.remove(key);
            return None;
        }
        (list.len() >= limit.max).then(|| {
            let oldest = list.front().copied().unwrap_or(now);
            limit.window.saturating_sub(now.duration_since(oldest))
        })
    }

    fn fail(&mut self, key: &str, limit: Limit, now: Instant) {
        if self.failures.len() >= MAX_KEYS && !self.failures.contains_key(key) {
            self.failures.retain(|_, l| {
                l.back()
                    .is_some_and(|t| now.duration_since(*t) < limit.window)
            });
            if self.failures.len() >= MAX_KEYS {
                return;
            }
        }
        let list = self.failures.entry(key.to_string()).or_default();
        list.push_back(now);
        // Only the last `max` failures decide anything.
        while list.len() > limit.max {
            list.pop_front();
        }
    }
}

pub struct LoginThrottle {
    limits: Limits,
    addresses: Mutex<Window>,
    users: Mutex<Window>,
}

impl LoginThrottle {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            addresses: Mutex::default(),
            users: Mutex::default(),
        }
    }

    /// `Err(retry after)` when this address or this user may not try now.
    pub fn check(&self, address: IpAddr, user: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let by_address =
            lock(&self.addresses).blocked(&address.to_string(), self.limits.per_address, now);
        let by_user = lock(&self.users).blocked(user, self.limits.per_user, now);
        match by_address.into_iter().chain(by_user).max() {
            Some(wait) => Err(wait.max(Duration::from_secs(1))),
            None => Ok(()),
        }
    }

    pub fn failed(&self, address: IpAddr, user: &str) {
        let now = Instant::now();
        lock(&self.addresses).fail(&address.to_string(), self.limits.per_address, now);
        lock(&self.users).fail(user, self.limits.per_user, now);
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
