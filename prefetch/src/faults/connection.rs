//! [`FaultyConnection`]: a connection cut while an outage lasts.

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};

use super::Faults;
use crate::cluster::{Connection, SlotMap};

/// A connection that fails every command while the [`Faults`]' outage
/// lasts, as if it were cut; otherwise the wrapped connection itself.
///
/// [`clean`](Self::clean) wraps one that no fault reaches (so that reads
/// and writes share a type).
#[derive(Clone, Debug)]
pub struct FaultyConnection<C> {
    inner: C,
    faults: Option<Faults>,
}

impl<C> FaultyConnection<C> {
    /// `inner`, cut whenever `faults` has an outage.
    pub fn new(inner: C, faults: Faults) -> Self {
        Self {
            inner,
            faults: Some(faults),
        }
    }

    /// `inner`, never cut.
    pub fn clean(inner: C) -> Self {
        Self {
            inner,
            faults: None,
        }
    }

    fn cut(&self) -> Option<redis::RedisError> {
        self.faults.as_ref().filter(|f| f.in_outage()).map(|_| {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "fault injection: the connection to Redis is cut",
            ))
        })
    }
}

impl<C: ConnectionLike + Send> ConnectionLike for FaultyConnection<C> {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self.cut() {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self.cut() {
            Some(e) => Box::pin(async move { Err(e) }),
            None => self.inner.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        self.inner.get_db()
    }
}

impl<C: Connection> Connection for FaultyConnection<C> {
    type Node = FaultyConnection<C::Node>;

    fn is_cluster(&self) -> bool {
        self.inner.is_cluster()
    }

    fn primaries(&self) -> impl std::future::Future<Output = RedisResult<Vec<Self::Node>>> + Send {
        let map = self.slot_map();
        async move { Ok(map.await?.nodes) }
    }

    fn slot_map(
        &self,
    ) -> impl std::future::Future<Output = RedisResult<SlotMap<Self::Node>>> + Send {
        let (cut, map, faults) = (self.cut(), self.inner.slot_map(), self.faults.clone());
        async move {
            if let Some(e) = cut {
                return Err(e);
            }
            Ok(map.await?.map_nodes(|inner| FaultyConnection {
                inner,
                faults: faults.clone(),
            }))
        }
    }
}
