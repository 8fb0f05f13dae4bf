//! [`Counting`]: a connection wrapper that counts requests and how many
//! were in flight at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// Wraps a connection and counts the requests made through it, and how many
/// were in flight at once (a pipelined sender does not wait in between).
#[derive(Clone)]
pub struct Counting<C> {
    /// The wrapped connection.
    pub inner: C,
    /// Requests sent (a pipeline counts once).
    pub round_trips: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl<C> Counting<C> {
    /// Wraps `inner`.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            round_trips: Arc::new(AtomicUsize::new(0)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            max_in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Requests so far.
    pub fn count(&self) -> usize {
        self.round_trips.load(Ordering::SeqCst)
    }

    /// Most requests that were awaiting their replies at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Counts a request as sent now; returns the in-flight gauge for `finish`.
    fn start(&self) -> Arc<AtomicUsize> {
        self.round_trips.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Arc::clone(&self.in_flight)
    }
}

/// Marks the request done when its reply has arrived.
fn finish<'a, T: Send + 'a>(
    in_flight: Arc<AtomicUsize>,
    fut: RedisFuture<'a, T>,
) -> RedisFuture<'a, T> {
    Box::pin(async move {
        let out = fut.await;
        in_flight.fetch_sub(1, Ordering::SeqCst);
        out
    })
}

impl<C: ConnectionLike + Send> ConnectionLike for Counting<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let in_flight = self.start();
        finish(in_flight, self.inner.req_packed_command(cmd))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let in_flight = self.start();
        finish(
            in_flight,
            self.inner.req_packed_commands(cmd, offset, count),
        )
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

impl<C: crate::Connection> crate::Connection for Counting<C> {
    type Node = Counting<C::Node>;

    fn is_cluster(&self) -> bool {
        self.inner.is_cluster()
    }

    fn primaries(
        &self,
    ) -> impl std::future::Future<Output = redis::RedisResult<Vec<Self::Node>>> + Send {
        let map = self.slot_map();
        async move { Ok(map.await?.nodes) }
    }

    fn slot_map(
        &self,
    ) -> impl std::future::Future<Output = redis::RedisResult<crate::SlotMap<Self::Node>>> + Send
    {
        let map = self.inner.slot_map();
        let this = self.clone();
        async move {
            // The nodes count into this wrapper's counters.
            Ok(map.await?.map_nodes(|inner| Counting {
                inner,
                round_trips: Arc::clone(&this.round_trips),
                in_flight: Arc::clone(&this.in_flight),
                max_in_flight: Arc::clone(&this.max_in_flight),
            }))
        }
    }
}
