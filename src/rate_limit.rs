//! Request path, step 5 (see `ARCHITECTURE.md`).
//!
//! Keyed rate limits, checked right after
//! authentication and before anything of the body is read.
//!
//! Two GCRA limiters from `governor`: one keyed by (company, user), one by
//! company. The user's limit is checked first, so a caller over its own limit
//! does not spend its company's allowance. The limiter is generic over its clock
//! so tests advance a `FakeRelativeClock` instead of sleeping.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::{StateInformationMiddleware, StateSnapshot};
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::auth::Identity;
use crate::config::RateLimitConfig;
use crate::error::GatewayError;

type Keyed<K, C> = RateLimiter<K, DashMapStateStore<K>, C, StateInformationMiddleware>;

pub struct RateLimits<C: Clock = DefaultClock> {
    user: Keyed<(String, String), C>,
    company: Keyed<String, C>,
    clock: C,
    user_policy: Policy,
    company_policy: Policy,
}

/// A limit as the IETF `RateLimit-Policy` header describes it: `q` requests
/// per `w` seconds (for GCRA: the burst, and the time it takes to refill).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub scope: &'static str,
    pub burst: u32,
    pub per_second: f64,
}

impl Policy {
    /// Seconds for an empty bucket to refill completely.
    pub fn window_s(&self) -> u64 {
        (f64::from(self.burst) / self.per_second).ceil().max(1.0) as u64
    }

    /// `"scope";q=N;w=S`
    pub fn header_item(&self) -> String {
        format!("\"{}\";q={};w={}", self.scope, self.burst, self.window_s())
    }

    /// `"scope";r=REMAINING;t=SECONDS-UNTIL-FULL`
    pub fn usage_item(&self, remaining: u32) -> String {
        let missing = f64::from(self.burst.saturating_sub(remaining));
        let t = (missing / self.per_second).ceil() as u64;
        format!("\"{}\";r={remaining};t={t}", self.scope)
    }
}

/// What an admitted request leaves of each limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub user: u32,
    pub company: u32,
}

impl<C: Clock> std::fmt::Debug for RateLimits<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("users", &self.user.len())
            .field("companies", &self.company.len())
            .finish()
    }
}

fn quota(per_second: f64, burst: u32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / per_second).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .expect("period is positive")
        .allow_burst(NonZeroU32::new(burst).expect("validated as >= 1"))
}

impl RateLimits<DefaultClock> {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        Self {
            user: RateLimiter::dashmap_with_clock(
                quota(config.user_per_second, config.user_burst),
                clock.clone(),
            )
            .with_middleware::<StateInformationMiddleware>(),
            company: RateLimiter::dashmap_with_clock(
                quota(config.company_per_second, config.company_burst),
                clock.clone(),
            )
            .with_middleware::<StateInformationMiddleware>(),
            clock,
            user_policy: Policy {
                scope: "user",
                burst: config.user_burst,
                per_second: config.user_per_second,
            },
            company_policy: Policy {
                scope: "company",
                burst: config.company_burst,
                per_second: config.company_per_second,
            },
        }
    }
}

impl<C: Clock> RateLimits<C> {
    /// Admits one request, or says how long to wait (whole seconds, rounded up).
    pub fn check(&self, who: &Identity) -> Result<Remaining, GatewayError> {
        let user_key = (who.company.clone(), who.user.clone());
        let user = self.check_one(&self.user, &user_key, "user")?;
        let company = self.check_one(&self.company, &who.company, "company")?;
        Ok(Remaining {
            user: user.remaining_burst_capacity(),
            company: company.remaining_burst_capacity(),
        })
    }

    /// The two policies, for the `RateLimit-Policy` header.
    pub fn policies(&self) -> [Policy; 2] {
        [self.user_policy, self.company_policy]
    }

    fn check_one<K: Hash + Eq + Clone>(
        &self,
        limiter: &Keyed<K, C>,
        key: &K,
        scope: &'static str,
    ) -> Result<StateSnapshot, GatewayError> {
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            GatewayError::RateLimited {
                scope,
                retry_after_s: retry_after_secs(wait),
            }
        })
    }

    /// Forgets keys whose state is back to full capacity, so memory stays
    /// bounded however many distinct callers there were.
    pub fn prune(&self) {
        self.user.retain_recent();
        self.company.retain_recent();
        self.user.shrink_to_fit();
        self.company.shrink_to_fit();
    }

    /// Number of keys held (users, companies).
    pub fn keys(&self) -> (usize, usize) {
        (self.user.len(), self.company.len())
    }
}

/// `Retry-After` is whole seconds: round up, and never say 0.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn who(c: &str, u: &str) -> Identity {
        Identity {
            company: c.into(),
            user: u.into(),
        }
    }

    fn config(user_rate: f64, user_burst: u32, co_rate: f64, co_burst: u32) -> RateLimitConfig {
        RateLimitConfig {
            user_per_second: user_rate,
            user_burst,
            company_per_second: co_rate,
            company_burst: co_burst,
            user_concurrent: 8,
            company_concurrent: 32,
        }
    }

    #[test]
    fn burst_then_refusal_with_exact_retry_after() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimits::with_clock(&config(0.5, 3, 100.0, 100), clock.clone());
        let alice = who("acme", "alice");
        let remaining: Vec<u32> = (0..3).map(|_| rl.check(&alice).unwrap().user).collect();
        assert_eq!(remaining, [2, 1, 0]);
        match rl.check(&alice) {
            Err(GatewayError::RateLimited {
                scope,
                retry_after_s,
            }) => {
                assert_eq!((scope, retry_after_s), ("user", 2));
            }
            other => panic!("{other:?}"),
        }
        clock.advance(Duration::from_millis(1500));
        match rl.check(&alice) {
            Err(GatewayError::RateLimited { retry_after_s, .. }) => assert_eq!(retry_after_s, 1),
            other => panic!("{other:?}"),
        }
        clock.advance(Duration::from_millis(500));
        rl.check(&alice).unwrap();
    }

    #[test]
    fn users_are_isolated_and_the_company_limit_spans_users() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimits::with_clock(&config(1.0, 2, 1.0, 3), clock.clone());
        rl.check(&who("acme", "alice")).unwrap();
        rl.check(&who("acme", "alice")).unwrap();
        assert!(
            rl.check(&who("acme", "alice")).is_err(),
            "alice over her limit"
        );
        // bob is unaffected by alice's refusal (her refused request did not
        // spend the company's allowance)...
        rl.check(&who("acme", "bob")).unwrap();
        // ...but the company's limit (3) now spans both.
        match rl.check(&who("acme", "carol")) {
            Err(GatewayError::RateLimited { scope, .. }) => assert_eq!(scope, "company"),
            other => panic!("{other:?}"),
        }
        rl.check(&who("globex", "gus")).unwrap();
    }

    #[test]
    fn pruning_forgets_idle_callers() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimits::with_clock(&config(10.0, 1, 10.0, 1), clock.clone());
        for i in 0..100 {
            rl.check(&who(&format!("c{i}"), "u")).unwrap();
        }
        assert_eq!(rl.keys(), (100, 100));
        clock.advance(Duration::from_secs(10));
        rl.prune();
        assert_eq!(rl.keys(), (0, 0));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}

#[cfg(test)]
mod policy_tests {
    use super::*;

    #[test]
    fn ietf_header_items() {
        let p = Policy {
            scope: "user",
            burst: 10,
            per_second: 5.0,
        };
        assert_eq!(p.header_item(), "\"user\";q=10;w=2");
        assert_eq!(p.usage_item(10), "\"user\";r=10;t=0");
        assert_eq!(p.usage_item(7), "\"user\";r=7;t=1");
        assert_eq!(p.usage_item(0), "\"user\";r=0;t=2");
    }
}
