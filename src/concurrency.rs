//! Request path, step 5 (see `ARCHITECTURE.md`).
//!
//! How many uploads run at once, and who gets the next exchange with Concur.
//!
//! Rate limits bound how often a caller may *start* an upload; they say nothing
//! about how long it lasts. An upload that trickles at the minimum body rate
//! holds its Concur slot for minutes, so one caller inside its rate limit could
//! otherwise take every `upstream.max_in_flight` slot and starve every other
//! company. Two mechanisms close that:
//!
//! - [`InFlightLimits`]: at most `rate_limit.user_concurrent` uploads in flight
//!   per (company, user) and `rate_limit.company_concurrent` per company, checked
//!   with the rate limit, before any body byte is read (`429 rate_limited`).
//!   A [`InFlight`] guard holds the place until the answer is ready.
//! - [`FairSlots`]: the Concur slots themselves. While slots are free a
//!   request takes one at once; when they are all taken, waiters queue per
//!   company and a freed slot goes to the waiting company that holds the
//!   *fewest* slots (FIFO within a company). A company with many uploads in
//!   flight therefore cannot push another company's upload back in the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::auth::Identity;
use crate::error::GatewayError;

/// What a refused caller is told to wait: an upload slot frees up when one of
/// its own uploads ends, which the gateway cannot predict.
const CONCURRENCY_RETRY_AFTER_S: u64 = 1;

/// Per-user and per-company caps on uploads in flight.
#[derive(Debug)]
pub struct InFlightLimits {
    user_max: usize,
    company_max: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    users: HashMap<(String, String), usize>,
    companies: HashMap<String, usize>,
}

/// One upload's place under the caps; given back when dropped.
#[derive(Debug)]
pub struct InFlight {
    limits: Arc<InFlightLimits>,
    company: String,
    user: String,
}

impl InFlightLimits {
    pub fn new(user_max: usize, company_max: usize) -> Arc<Self> {
        Arc::new(Self {
            user_max,
            company_max,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Takes a place for `who`, or refuses with the scope that is full
    /// (`user_concurrent` or `company_concurrent`).
    pub fn try_acquire(self: &Arc<Self>, who: &Identity) -> Result<InFlight, GatewayError> {
        let mut counts = self.counts.lock().expect("in-flight lock");
        let company = counts.companies.get(&who.company).copied().unwrap_or(0);
        let user_key = (who.company.clone(), who.user.clone());
        let user = counts.users.get(&user_key).copied().unwrap_or(0);
        let scope = if user >= self.user_max {
            "user_concurrent"
        } else if company >= self.company_max {
            "company_concurrent"
        } else {
            *counts.users.entry(user_key).or_insert(0) += 1;
            *counts.companies.entry(who.company.clone()).or_insert(0) += 1;
            return Ok(InFlight {
                limits: self.clone(),
                company: who.company.clone(),
                user: who.user.clone(),
            });
        };
        Err(GatewayError::RateLimited {
            scope,
            retry_after_s: CONCURRENCY_RETRY_AFTER_S,
        })
    }

    /// Uploads in flight for (company, user) and for the company.
    pub fn current(&self, who: &Identity) -> (usize, usize) {
        let counts = self.counts.lock().expect("in-flight lock");
        (
            counts
                .users
                .get(&(who.company.clone(), who.user.clone()))
                .copied()
                .unwrap_or(0),
            counts.companies.get(&who.company).copied().unwrap_or(0),
        )
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut counts = self.limits.counts.lock().expect("in-flight lock");
        let key = (
            std::mem::take(&mut self.company),
            std::mem::take(&mut self.user),
        );
        decrement(&mut counts.users, &key);
        decrement(&mut counts.companies, &key.0);
    }
}

/// Counts down and forgets keys at zero, so the maps hold only callers with
/// uploads in flight.
fn decrement<K, Q>(map: &mut HashMap<K, usize>, key: &Q)
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
{
    if let Some(n) = map.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            map.remove(key);
        }
    }
}

/// The Concur slots (`upstream.max_in_flight`), handed out fairly between
/// companies; see the module docs.
#[derive(Debug)]
pub struct FairSlots {
    state: Mutex<SlotState>,
    queue_timeout: Duration,
}

#[derive(Debug)]
struct SlotState {
    free: usize,
    /// Slots held, per company (only companies holding one).
    held: HashMap<Arc<str>, usize>,
    /// Waiters per company, oldest first (only companies with waiters).
    waiting: HashMap<Arc<str>, VecDeque<Waiter>>,
    next_seq: u64,
}

#[derive(Debug)]
struct Waiter {
    seq: u64,
    grant: oneshot::Sender<()>,
}

/// A Concur slot, given back (to the next waiter, fairly) when dropped.
#[derive(Debug)]
pub struct Slot {
    slots: Arc<FairSlots>,
    company: Arc<str>,
}

impl FairSlots {
    pub fn new(max: usize, queue_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SlotState {
                free: max,
                held: HashMap::new(),
                waiting: HashMap::new(),
                next_seq: 0,
            }),
            queue_timeout,
        })
    }

    /// A slot for `company`, waiting at most `queue_timeout`
    /// (`503 overloaded` after that).
    pub async fn acquire(self: &Arc<Self>, company: &str) -> Result<Slot, GatewayError> {
        let company: Arc<str> = Arc::from(company);
        let (seq, granted) = {
            let mut state = self.state.lock().expect("slots lock");
            if state.free > 0 {
                state.free -= 1;
                *state.held.entry(company.clone()).or_insert(0) += 1;
                return Ok(self.slot(company));
            }
            let (tx, rx) = oneshot::channel();
            let seq = state.next_seq;
            state.next_seq += 1;
            state
                .waiting
                .entry(company.clone())
                .or_default()
                .push_back(Waiter { seq, grant: tx });
            (seq, rx)
        };
        let overloaded = GatewayError::Overloaded {
            retry_after_s: self.queue_timeout.as_secs().max(1),
        };
        let mut granted = granted;
        match tokio::time::timeout(self.queue_timeout, &mut granted).await {
            Ok(Ok(())) => return Ok(self.slot(company)),
            // Senders stay queued until they grant; none is dropped unsent.
            Ok(Err(_)) => return Err(overloaded),
            Err(_elapsed) => {}
        }
        // Timed out: leave the queue, unless a slot was granted meanwhile
        // (grants happen under the lock, so after taking it one of the two holds).
        let mut state = self.state.lock().expect("slots lock");
        if let Some(queue) = state.waiting.get_mut(&company)
            && let Some(at) = queue.iter().position(|w| w.seq == seq)
        {
            queue.remove(at);
            if queue.is_empty() {
                state.waiting.remove(&company);
            }
            return Err(overloaded);
        }
        drop(state);
        match granted.try_recv() {
            Ok(()) => Ok(self.slot(company)),
            Err(_) => Err(overloaded),
        }
    }

    fn slot(self: &Arc<Self>, company: Arc<str>) -> Slot {
        Slot {
            slots: self.clone(),
            company,
        }
    }

    fn release(&self, company: &Arc<str>) {
        let mut state = self.state.lock().expect("slots lock");
        decrement(&mut state.held, company);
        // The waiting company holding the fewest slots goes first; among
        // equals, the longest-waiting request.
        loop {
            let next = state
                .waiting
                .iter()
                .filter_map(|(c, q)| q.front().map(|w| (c, w.seq)))
                .min_by_key(|(c, seq)| (state.held.get(*c).copied().unwrap_or(0), *seq))
                .map(|(c, _)| c.clone());
            let Some(next) = next else {
                state.free += 1;
                return;
            };
            let queue = state.waiting.get_mut(&next).expect("chosen from the map");
            let waiter = queue.pop_front().expect("chosen for its front");
            if queue.is_empty() {
                state.waiting.remove(&next);
            }
            // A waiter whose request is gone (client disconnected) is skipped.
            if waiter.grant.send(()).is_ok() {
                *state.held.entry(next).or_insert(0) += 1;
                return;
            }
        }
    }

    /// Slots free now.
    pub fn available(&self) -> usize {
        self.state.lock().expect("slots lock").free
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release(&self.company);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who(company: &str, user: &str) -> Identity {
        Identity {
            company: company.into(),
            user: user.into(),
        }
    }

    fn scope(r: Result<InFlight, GatewayError>) -> &'static str {
        match r {
            Err(GatewayError::RateLimited { scope, .. }) => scope,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn caps_per_user_and_per_company_and_places_come_back() {
        let limits = InFlightLimits::new(2, 3);
        let a1 = limits.try_acquire(&who("acme", "a")).unwrap();
        let _a2 = limits.try_acquire(&who("acme", "a")).unwrap();
        assert_eq!(
            scope(limits.try_acquire(&who("acme", "a"))),
            "user_concurrent"
        );
        let _b1 = limits.try_acquire(&who("acme", "b")).unwrap();
        assert_eq!(
            scope(limits.try_acquire(&who("acme", "c"))),
            "company_concurrent"
        );
        // Another company is not affected.
        let _z = limits.try_acquire(&who("zeta", "a")).unwrap();
        assert_eq!(limits.current(&who("acme", "a")), (2, 3));
        drop(a1);
        assert_eq!(limits.current(&who("acme", "a")), (1, 2));
        let _c = limits.try_acquire(&who("acme", "c")).unwrap();
        drop(_c);
        drop(_a2);
        drop(_b1);
        assert_eq!(limits.current(&who("acme", "a")), (0, 0));
        assert!(
            limits.counts.lock().unwrap().users.len() == 1,
            "only zeta/a left"
        );
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_company_holding_fewest() {
        let slots = FairSlots::new(2, Duration::from_secs(5));
        let a1 = slots.acquire("acme").await.unwrap();
        let a2 = slots.acquire("acme").await.unwrap();
        assert_eq!(slots.available(), 0);
        // acme queues three more, then zeta one.
        let mut acme_waiters = Vec::new();
        for _ in 0..3 {
            let s = slots.clone();
            acme_waiters.push(tokio::spawn(async move { s.acquire("acme").await }));
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = slots.clone();
        let zeta = tokio::spawn(async move { s.acquire("zeta").await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // acme holds 1 after this release, zeta 0: zeta goes first although
        // it queued last.
        drop(a1);
        let zeta_slot = tokio::time::timeout(Duration::from_secs(1), zeta)
            .await
            .expect("zeta was granted the freed slot")
            .unwrap()
            .unwrap();
        assert!(acme_waiters.iter().all(|w| !w.is_finished()));
        // Next release: acme (1 held) vs nobody else waiting: acme's oldest.
        drop(a2);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(acme_waiters.iter().filter(|w| w.is_finished()).count(), 1);
        drop(zeta_slot);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(acme_waiters.iter().filter(|w| w.is_finished()).count(), 2);
    }

    #[tokio::test]
    async fn a_waiter_times_out_with_overloaded_and_leaves_the_queue() {
        let slots = FairSlots::new(1, Duration::from_millis(100));
        let held = slots.acquire("acme").await.unwrap();
        let r = slots.acquire("zeta").await;
        assert!(matches!(r, Err(GatewayError::Overloaded { .. })), "{r:?}");
        assert!(slots.state.lock().unwrap().waiting.is_empty());
        drop(held);
        assert_eq!(slots.available(), 1);
        // A waiter whose request went away is skipped.
        let held = slots.acquire("acme").await.unwrap();
        let s = slots.clone();
        let gone = tokio::spawn(async move { s.acquire("zeta").await });
        tokio::task::yield_now().await;
        gone.abort();
        let _ = gone.await;
        drop(held);
        assert_eq!(slots.available(), 1);
    }
}
