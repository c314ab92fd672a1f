//! Request path, step 1 (see `ARCHITECTURE.md`).
//!
//! The client connections the gateway holds, and which one gives way when
//! `server.max_connections` is reached.
//!
//! A connection that is not serving a request (one that has not sent a
//! complete head yet, or a keep-alive connection between requests) costs a
//! socket and nothing else, so a client can open hundreds of them and send
//! nothing. If such connections could fill the table, a caller with a real
//! upload would be refused until the header timeout freed a place. Instead,
//! at the limit the connection idle for longest is told to close (hyper closes
//! an idle connection at once on a graceful shutdown; one that just started a
//! request finishes it first) and the new one is served. Only when every
//! connection is busy with a request is a new one closed unanswered.
//!
//! On HTTP/2 a connection carries many requests at once (streams): it is
//! busy while any of them is being served, and idle otherwise.
//!
//! Evictions still in progress are bounded ([`EVICTION_SLACK`]): the table
//! never holds more than `max_connections + EVICTION_SLACK` sockets.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Connections that may be closing (evicted) beyond the limit at once.
pub const EVICTION_SLACK: usize = 64;

/// What happened to a new connection at admission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A place was free.
    Admitted,
    /// The table was full: the longest-idle connection was told to close.
    AdmittedByEviction,
    /// The table was full of busy connections.
    Refused,
}

#[derive(Debug)]
pub struct Connections {
    max: usize,
    base: Instant,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    live: HashMap<u64, Entry>,
}

#[derive(Debug)]
struct Entry {
    activity: Arc<Activity>,
    evict: CancellationToken,
    evicted: bool,
}

/// Whether a connection is serving requests, and since when it is idle.
#[derive(Debug)]
pub struct Activity {
    active: AtomicUsize,
    /// Nanoseconds since `Connections::base` of the last request's end (or
    /// the accept).
    idle_since: AtomicU64,
    base: Instant,
}

impl Activity {
    /// Marks a request as being served until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::AcqRel);
        Busy(self.clone())
    }

    /// How long the connection has served no request; `None` while it serves
    /// one (on HTTP/2, while any of its streams is being served).
    pub fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = self.idle_since.load(Ordering::Acquire);
        Some(Duration::from_nanos(self.now().saturating_sub(since)))
    }

    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
}

/// A request being served on a connection.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now(), Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connection's place in the table, given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    connections: Arc<Connections>,
    id: u64,
    pub activity: Arc<Activity>,
    /// Cancelled when the connection must close to make room.
    pub evict: CancellationToken,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.connections.state.lock().expect("connections lock");
        state.live.remove(&self.id);
    }
}

impl Connections {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            base: Instant::now(),
            state: Mutex::new(State::default()),
        })
    }

    /// Connections held now (evicted ones that are still closing included).
    pub fn len(&self) -> usize {
        self.state.lock().expect("connections lock").live.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a new connection, evicting the longest-idle one at the limit.
    pub fn admit(self: &Arc<Self>) -> (Admission, Option<Ticket>) {
        let mut state = self.state.lock().expect("connections lock");
        let mut admission = Admission::Admitted;
        let serving = state.live.values().filter(|e| !e.evicted).count();
        if serving >= self.max {
            if state.live.len() >= self.max + EVICTION_SLACK {
                return (Admission::Refused, None);
            }
            let oldest_idle = state
                .live
                .iter_mut()
                .filter(|(_, e)| !e.evicted && e.activity.active.load(Ordering::Acquire) == 0)
                .min_by_key(|(_, e)| e.activity.idle_since.load(Ordering::Acquire));
            let Some((_, entry)) = oldest_idle else {
                return (Admission::Refused, None);
            };
            entry.evicted = true;
            entry.evict.cancel();
            admission = Admission::AdmittedByEviction;
        }
        let id = state.next_id;
        state.next_id += 1;
        let activity = Arc::new(Activity {
            active: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.base.elapsed().as_nanos() as u64),
            base: self.base,
        });
        let evict = CancellationToken::new();
        state.live.insert(
            id,
            Entry {
                activity: activity.clone(),
                evict: evict.clone(),
                evicted: false,
            },
        );
        let ticket = Ticket {
            connections: self.clone(),
            id,
            activity,
            evict,
        };
        (admission, Some(ticket))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_limit_the_longest_idle_connection_gives_way() {
        let conns = Connections::new(2);
        let (a, first) = conns.admit();
        assert_eq!(a, Admission::Admitted);
        let first = first.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let second = conns.admit().1.unwrap();
        // The first serves a request, then goes idle again: now the second
        // has been idle longer.
        drop(first.activity.begin());
        let (a, third) = conns.admit();
        assert_eq!(a, Admission::AdmittedByEviction);
        assert!(second.evict.is_cancelled() && !first.evict.is_cancelled());
        // Busy connections are never evicted: with both others busy (the
        // evicted one still closing does not count), a fourth is refused.
        let _busy1 = first.activity.begin();
        let third = third.unwrap();
        let _busy3 = third.activity.begin();
        assert_eq!(conns.admit().0, Admission::Refused);
        assert_eq!(conns.len(), 3);
        drop(second);
        assert_eq!(conns.len(), 2);
    }

    #[test]
    fn idle_time_counts_from_the_last_request_and_not_while_serving() {
        let conns = Connections::new(4);
        let t = conns.admit().1.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(t.activity.idle_for().unwrap() >= Duration::from_millis(5));
        let a = t.activity.begin();
        let b = t.activity.begin();
        assert_eq!(t.activity.idle_for(), None);
        drop(a);
        assert_eq!(t.activity.idle_for(), None, "one stream still served");
        drop(b);
        assert!(t.activity.idle_for().unwrap() < Duration::from_millis(5));
    }

    #[test]
    fn evictions_in_progress_are_bounded() {
        let conns = Connections::new(1);
        let mut held = vec![conns.admit().1.unwrap()];
        for _ in 0..EVICTION_SLACK {
            let (a, t) = conns.admit();
            assert_eq!(a, Admission::AdmittedByEviction);
            held.push(t.unwrap());
        }
        // Every evicted connection is still open: no more room.
        assert_eq!(conns.admit().0, Admission::Refused);
        assert_eq!(conns.len(), 1 + EVICTION_SLACK);
    }
}
