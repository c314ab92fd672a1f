//! Request path, step 1 (see `ARCHITECTURE.md`).
//!
//! Connection workers: a thread per core, each running a single-threaded
//! tokio runtime of its own, and each client connection run by one of them
//! from accept to close (`server.workers`, one per CPU by default).
//!
//! This is how nginx and Envoy run their connections, and for the same
//! reason. Under tokio's work-stealing scheduler a connection's task went
//! to whichever worker thread its socket's readiness was seen on, so an
//! upload's buffers were allocated on one thread and freed on another:
//! glibc's arena of the first thread then had to be locked by the second,
//! and with two threads at it the lock was contended (in `perf`, 11,000 of
//! the 14,300 `futex` calls in 4 s at 100 KiB uploads were glibc arena
//! locks, most of the rest tokio waking its other worker). Here a
//! connection, its request tasks and its pooled connections to Concur
//! (`crate::upstream` keeps one pool per worker) stay on one thread.
//! Measured (docs/benchmarks.md, levers): 16 connections of 100 KiB
//! uploads, throughput ×1.19, p99 ×0.81, CPU per GB ×0.88.
//!
//! What stays on the process's main runtime: accepting, the admin
//! endpoints, the periodic housekeeping and the trace exporter; their work
//! is per event, not per byte. What a request spawns (a Redis release sent
//! after its answer, a lease renewal) runs on the request's worker, and each
//! worker calls Redis over a connection of its own (`crate::store::redis`).
//!
//! A new connection goes to the worker with the fewest tasks of this kind
//! (connections and HTTP/2 streams). An HTTP/2 connection's streams are
//! spread too ([`Spread`], hyper's executor for them): each stays on the
//! connection's worker unless another worker has at least two tasks fewer,
//! so a mesh sidecar that sends all its callers' requests over one HTTP/2
//! connection still gets every core once it has streams enough.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::metrics::WorkerLabel;

thread_local! {
    /// This thread's index among the workers (`usize::MAX`: not a worker).
    static INDEX: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The index of the connection worker running this code, if it is one.
pub fn current() -> Option<usize> {
    let i = INDEX.with(Cell::get);
    (i != usize::MAX).then_some(i)
}

struct Worker {
    handle: Handle,
    /// Connections and HTTP/2 streams running on this worker: its
    /// `concur_gateway_worker_tasks` gauge.
    load: Gauge,
}

/// The connection workers of one [`crate::server::run`].
pub struct Workers {
    workers: Vec<Worker>,
    /// Dropping these ends the workers' runtimes.
    stop: Mutex<Vec<oneshot::Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    /// Where the search for the least busy worker starts: ties go round.
    next: AtomicUsize,
}

impl Workers {
    /// Starts `n` (at least one) worker threads, `gw-worker-0` …, each
    /// counting its tasks in its gauge of `tasks`.
    pub fn start(n: usize, tasks: &Family<WorkerLabel, Gauge>) -> std::io::Result<Arc<Self>> {
        let n = n.max(1);
        let mut workers = Vec::with_capacity(n);
        let mut stop = Vec::with_capacity(n);
        let mut threads = Vec::with_capacity(n);
        for i in 0..n {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let handle = runtime.handle().clone();
            let (tx, rx) = oneshot::channel::<()>();
            let spawned = std::thread::Builder::new()
                .name(format!("gw-worker-{i}"))
                .spawn(move || {
                    INDEX.with(|c| c.set(i));
                    // Runs what is spawned on it until told to stop (or until
                    // `Workers` is dropped); then its tasks are dropped with it.
                    runtime.block_on(async move {
                        let _ = rx.await;
                    });
                });
            let thread = match spawned {
                Ok(thread) => thread,
                Err(e) => {
                    // The ones already started end as `stop` is dropped.
                    return Err(e);
                }
            };
            let load = tasks
                .get_or_create(&WorkerLabel { worker: i as u32 })
                .clone();
            workers.push(Worker { handle, load });
            stop.push(tx);
            threads.push(thread);
        }
        Ok(Arc::new(Self {
            workers,
            stop: Mutex::new(stop),
            threads: Mutex::new(threads),
            next: AtomicUsize::new(0),
        }))
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Where a new task goes: the calling worker unless another has at least
    /// two tasks fewer (the caller's own task, an HTTP/2 connection, counts
    /// there), else the worker with the fewest, ties taken in turn.
    fn pick(&self) -> usize {
        let n = self.workers.len();
        let load = |i: usize| self.workers[i].load.get();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = start;
        for k in 1..n {
            let i = (start + k) % n;
            if load(i) < load(best) {
                best = i;
            }
        }
        match current().filter(|&here| here < n) {
            Some(here) if load(here) <= load(best) + 1 => here,
            _ => best,
        }
    }

    /// Runs the future that `make` builds on the least busy worker; `make`
    /// runs there too (a socket must be registered by the runtime that will
    /// poll it).
    pub fn spawn_with<M, F>(&self, make: M)
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let worker = &self.workers[self.pick()];
        let load = worker.load.clone();
        load.inc();
        let busy = Busy(load);
        worker.handle.spawn(async move {
            let _busy = busy;
            make().await;
        });
    }

    /// Ends the workers' runtimes (what still runs on them is dropped) and
    /// waits for their threads to finish.
    pub async fn shutdown(&self) {
        drop(std::mem::take(
            &mut *self.stop.lock().expect("workers lock"),
        ));
        let threads = std::mem::take(&mut *self.threads.lock().expect("workers lock"));
        if threads.is_empty() {
            return;
        }
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// Counts a task against its worker's load while it lives (also when the
/// runtime drops it unfinished).
struct Busy(Gauge);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// hyper's executor for HTTP/2 streams: each stream's task on the
/// connection's worker unless another has at least two tasks fewer (then on
/// the least busy one).
#[derive(Clone)]
pub struct Spread(pub Arc<Workers>);

impl<F> hyper::rt::Executor<F> for Spread
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn_with(move || async move {
            fut.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::time::Duration;

    /// Runs a task through `spread`, as hyper runs a stream: which worker
    /// took it, and what holds it until sent or dropped.
    async fn execute_held(spread: &Spread) -> (usize, oneshot::Sender<()>) {
        let (hold_tx, hold_rx) = oneshot::channel::<()>();
        let (where_tx, where_rx) = oneshot::channel();
        hyper::rt::Executor::execute(spread, async move {
            let _ = where_tx.send(current().unwrap());
            let _ = hold_rx.await;
        });
        (where_rx.await.unwrap(), hold_tx)
    }

    /// Which worker runs a spawned task, reported back.
    fn run_where(
        workers: &Workers,
        hold: Option<oneshot::Receiver<()>>,
    ) -> oneshot::Receiver<usize> {
        let (tx, rx) = oneshot::channel();
        workers.spawn_with(move || async move {
            let _ = tx.send(current().expect("on a worker"));
            if let Some(hold) = hold {
                let _ = hold.await;
            }
        });
        rx
    }

    #[tokio::test]
    async fn tasks_go_to_the_least_busy_worker_and_run_on_its_thread() {
        let workers = Workers::start(3, &Family::default()).unwrap();
        assert_eq!(workers.len(), 3);
        assert_eq!(current(), None, "the test's own thread is no worker");
        // Three long tasks: one on each worker.
        let mut holds = Vec::new();
        let mut seen = HashSet::new();
        for _ in 0..3 {
            let (tx, rx) = oneshot::channel();
            holds.push(tx);
            seen.insert(run_where(&workers, Some(rx)).await.unwrap());
        }
        assert_eq!(seen, HashSet::from([0, 1, 2]));
        // Worker 1's task ends: the next task goes there, whatever the turn.
        let _ = holds.remove(1).send(());
        for _ in 0..100 {
            if workers.workers[1].load.get() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for _ in 0..4 {
            let (tx, rx) = oneshot::channel();
            assert_eq!(run_where(&workers, Some(rx)).await.unwrap(), 1);
            drop(tx);
            while workers.workers[1].load.get() != 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        drop(holds);
        workers.shutdown().await;
    }

    #[tokio::test]
    async fn a_worker_keeps_what_it_spawns_until_another_has_two_tasks_fewer() {
        let workers = Workers::start(2, &Family::default()).unwrap();
        let inner = workers.clone();
        let (tx, rx) = oneshot::channel();
        // A task on one worker (an HTTP/2 connection, say) spawns held tasks
        // (its streams) through `Spread`, as hyper does.
        workers.spawn_with(move || async move {
            let here = current().unwrap();
            let spread = Spread(inner.clone());
            let mut holds = Vec::new();
            let mut placed = Vec::new();
            for _ in 0..6 {
                let (worker, hold) = execute_held(&spread).await;
                placed.push(worker == here);
                holds.push(hold);
            }
            let loads: Vec<i64> = inner.workers.iter().map(|w| w.load.get()).collect();
            drop(holds);
            let _ = tx.send((placed, loads));
        });
        let (placed, loads) = rx.await.unwrap();
        // Here: the connection and the first stream (1 + 1 against 0 + 1 is
        // within one), then the other, and so on in turn.
        assert_eq!(placed, [true, false, true, false, true, false]);
        // The connection and three streams here, three there.
        let mut sorted = loads.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [3, 4], "{loads:?}");
        workers.shutdown().await;
    }

    #[tokio::test]
    async fn many_streams_of_one_connection_use_every_worker() {
        let workers = Workers::start(3, &Family::default()).unwrap();
        let inner = workers.clone();
        let (tx, rx) = oneshot::channel();
        workers.spawn_with(move || async move {
            let spread = Spread(inner.clone());
            let mut holds = Vec::new();
            let mut seen = Vec::new();
            for _ in 0..100 {
                let (worker, hold) = execute_held(&spread).await;
                seen.push(worker);
                holds.push(hold);
            }
            drop(holds);
            let _ = tx.send(seen);
        });
        let seen = rx.await.unwrap();
        for w in 0..3 {
            let n = seen.iter().filter(|&&i| i == w).count();
            assert!((32..=35).contains(&n), "worker {w} ran {n} of 100 streams");
        }
        workers.shutdown().await;
    }

    #[tokio::test]
    async fn shutdown_ends_the_threads_and_drops_what_runs() {
        let workers = Workers::start(2, &Family::default()).unwrap();
        let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
        struct Tell(Option<oneshot::Sender<()>>);
        impl Drop for Tell {
            fn drop(&mut self) {
                let _ = self.0.take().unwrap().send(());
            }
        }
        let tell = Tell(Some(dropped_tx));
        workers.spawn_with(move || async move {
            let _tell = tell;
            std::future::pending::<()>().await;
        });
        workers.shutdown().await;
        assert!(workers.threads.lock().unwrap().is_empty());
        tokio::time::timeout(Duration::from_secs(5), dropped_rx)
            .await
            .expect("the pending task was dropped")
            .unwrap();
        assert_eq!(workers.workers.iter().map(|w| w.load.get()).sum::<i64>(), 0);
    }
}
