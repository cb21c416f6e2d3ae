//! What every listener (gRPC, forward_auth, admin) does with a TCP connection before and while
//! HTTP runs on it, so that a peer cannot hold certbound's file descriptors: a cap on open
//! connections (beyond it a new one is closed at once), a connection that sends nothing within
//! the first-byte timeout is closed, and so is one on which nothing is read or written for the
//! idle timeout (HTTP/1 keep-alive and idle HTTP/2 alike: the deadline lives in the byte
//! stream, below HTTP, so it needs no help from hyper, tonic or axum). Header size limits are the
//! HTTP builders' (each listener sets them from [`ConnectionLimits::max_request_header_bytes`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use certbound_core::config::{ConfigError, ConnectionLimitsConfig};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// `limits.connections`, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    pub max_open: usize,
    pub untrusted_max_open: usize,
    pub first_byte: Duration,
    pub idle: Duration,
    pub max_request_header_bytes: usize,
}

/// The admin listener's cap: a scraper and a few probes.
pub const ADMIN_MAX_OPEN: usize = 64;

/// hyper's HTTP/1 read buffer cannot be smaller.
const MIN_HEADER_BYTES: usize = 8192;

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self::validate(&ConnectionLimitsConfig::default()).expect("the defaults are valid")
    }
}

impl ConnectionLimits {
    pub fn validate(config: &ConnectionLimitsConfig) -> Result<Self, ConfigError> {
        let positive = |value: u64, key: &str| {
            if value == 0 {
                Err(ConfigError::new(
                    format!("limits.connections.{key}"),
                    "must be positive",
                ))
            } else {
                Ok(value)
            }
        };
        positive(config.max_open as u64, "max_open")?;
        positive(config.untrusted_max_open as u64, "untrusted_max_open")?;
        positive(
            config.first_byte_timeout_seconds,
            "first_byte_timeout_seconds",
        )?;
        positive(config.idle_timeout_seconds, "idle_timeout_seconds")?;
        if config.max_request_header_bytes < MIN_HEADER_BYTES {
            return Err(ConfigError::new(
                "limits.connections.max_request_header_bytes",
                format!("must be at least {MIN_HEADER_BYTES}"),
            ));
        }
        Ok(Self {
            max_open: config.max_open,
            untrusted_max_open: config.untrusted_max_open,
            first_byte: Duration::from_secs(config.first_byte_timeout_seconds),
            idle: Duration::from_secs(config.idle_timeout_seconds),
            max_request_header_bytes: config.max_request_header_bytes,
        })
    }

    /// The header limit as HTTP/2's SETTINGS_MAX_HEADER_LIST_SIZE.
    pub fn h2_header_list(&self) -> u32 {
        u32::try_from(self.max_request_header_bytes).unwrap_or(u32::MAX)
    }
}

/// Why a listener closed a connection itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// The listener already had its cap of open connections.
    OverLimit,
    /// Nothing arrived within the first-byte timeout.
    FirstByteTimeout,
    /// Nothing was read or written within the idle timeout.
    IdleTimeout,
}

impl Closed {
    pub const ALL: [Closed; 3] = [
        Closed::OverLimit,
        Closed::FirstByteTimeout,
        Closed::IdleTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Closed::OverLimit => "over_limit",
            Closed::FirstByteTimeout => "first_byte_timeout",
            Closed::IdleTimeout => "idle_timeout",
        }
    }
}

/// Admits a listener's connections under its cap and deadlines.
#[derive(Clone)]
pub struct Gate {
    name: &'static str,
    open: Arc<Semaphore>,
    first_byte: Duration,
    idle: Duration,
    counters: Arc<Counters>,
}

struct Counters {
    open: Gauge,
    closed: [Counter; 3],
    /// When the last "over the limit" warning was logged (seconds since the gate was made).
    last_warning: AtomicU64,
    since: Instant,
}

impl Gate {
    /// A gate for listener `name` (`grpc`, `forward_auth`, `forward_auth_untrusted`, `admin`),
    /// keeping at most `max_open` connections.
    pub fn new(
        name: &'static str,
        max_open: usize,
        limits: &ConnectionLimits,
        metrics: &Metrics,
    ) -> Self {
        Self::with_deadlines(name, max_open, limits.first_byte, limits.idle, metrics)
    }

    pub fn with_deadlines(
        name: &'static str,
        max_open: usize,
        first_byte: Duration,
        idle: Duration,
        metrics: &Metrics,
    ) -> Self {
        let (open, closed) = metrics.listener(name);
        Self {
            name,
            open: Arc::new(Semaphore::new(max_open)),
            first_byte,
            idle,
            counters: Arc::new(Counters {
                open,
                closed,
                last_warning: AtomicU64::new(u64::MAX),
                since: Instant::now(),
            }),
        }
    }

    /// `stream` under the gate's deadlines, holding one of its places; `None` (the stream is
    /// dropped, so closed) when every place is taken.
    pub fn admit<S>(&self, stream: S) -> Option<Guarded<S>> {
        let Ok(permit) = Arc::clone(&self.open).try_acquire_owned() else {
            self.counters.closed[0].inc();
            self.warn_over_limit();
            return None;
        };
        self.counters.open.inc();
        Some(Guarded {
            inner: stream,
            deadline: Box::pin(tokio::time::sleep(self.first_byte)),
            idle: self.idle,
            started: false,
            _place: Place {
                _permit: permit,
                counters: Arc::clone(&self.counters),
            },
        })
    }

    /// At most one warning a minute: a flood must not become a flood of log lines.
    fn warn_over_limit(&self) {
        let now = self.counters.since.elapsed().as_secs();
        let last = self.counters.last_warning.load(Ordering::Relaxed);
        if (last == u64::MAX || now >= last + 60)
            && self
                .counters
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                listener = self.name,
                max_open = self.open.available_permits(),
                "connection limit reached: new connections are closed at once \
                 (limits.connections; certbound_connections_closed_total counts them)"
            );
        }
    }
}

/// One of a gate's places, given back when the connection ends.
struct Place {
    _permit: OwnedSemaphorePermit,
    counters: Arc<Counters>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.counters.open.dec();
    }
}

/// A connection under its gate's deadlines: reading fails with `TimedOut` once the deadline
/// passes with nothing read or written, and the HTTP server on top closes the connection.
pub struct Guarded<S> {
    inner: S,
    deadline: Pin<Box<Sleep>>,
    idle: Duration,
    /// A first byte arrived: the idle timeout applies from now on.
    started: bool,
    _place: Place,
}

impl<S> Guarded<S> {
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn active(&mut self) {
        self.started = true;
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => match self.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let why = if self.started {
                        Closed::IdleTimeout
                    } else {
                        Closed::FirstByteTimeout
                    };
                    let counter = if self.started { 2 } else { 1 };
                    self._place.counters.closed[counter].inc();
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why.name())))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(1..)) = written {
            // Writing is activity only once the peer has spoken: a server does not talk first.
            if self.started {
                self.active();
            }
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(1..)) = written
            && self.started
        {
            self.active();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn gate(max_open: usize, first_byte_ms: u64, idle_ms: u64, metrics: &Metrics) -> Gate {
        Gate::with_deadlines(
            "test",
            max_open,
            Duration::from_millis(first_byte_ms),
            Duration::from_millis(idle_ms),
            metrics,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_first_byte_timeout() {
        let metrics = Metrics::default();
        let gate = gate(4, 100, 10_000, &metrics);
        let (_client, server) = tokio::io::duplex(64);
        let mut guarded = gate.admit(server).unwrap();
        let mut buf = [0u8; 8];
        let error = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(error.to_string(), "first_byte_timeout");
        assert!(
            metrics.encode().contains(
                r#"certbound_connections_closed_total{listener="test",reason="first_byte_timeout"} 1"#
            ),
            "{}",
            metrics.encode()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn activity_keeps_a_connection_and_silence_then_closes_it() {
        let metrics = Metrics::default();
        let gate = gate(4, 100, 1_000, &metrics);
        let (mut client, server) = tokio::io::duplex(64);
        let mut guarded = gate.admit(server).unwrap();
        let mut buf = [0u8; 8];
        // Bytes every 600 ms, longer than the first-byte timeout, shorter than the idle one.
        for _ in 0..5 {
            client.write_all(b"x").await.unwrap();
            assert_eq!(guarded.read(&mut buf).await.unwrap(), 1);
            tokio::time::sleep(Duration::from_millis(600)).await;
        }
        let error = guarded.read(&mut buf).await.unwrap_err();
        assert_eq!(error.to_string(), "idle_timeout");
    }

    #[tokio::test]
    async fn beyond_the_cap_a_connection_is_refused_until_one_ends() {
        let metrics = Metrics::default();
        let gate = gate(2, 10_000, 10_000, &metrics);
        let first = gate.admit(()).unwrap();
        let _second = gate.admit(()).unwrap();
        assert!(gate.admit(()).is_none());
        let text = metrics.encode();
        assert!(
            text.contains(r#"certbound_connections_open{listener="test"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"certbound_connections_closed_total{listener="test",reason="over_limit"} 1"#
            ),
            "{text}"
        );
        drop(first);
        assert!(gate.admit(()).is_some());
    }

    #[test]
    fn limits_are_validated_with_their_key() {
        let mut config = ConnectionLimitsConfig {
            max_open: 0,
            ..Default::default()
        };
        assert_eq!(
            ConnectionLimits::validate(&config).unwrap_err().key,
            "limits.connections.max_open"
        );
        config.max_open = 1;
        config.max_request_header_bytes = 100;
        assert_eq!(
            ConnectionLimits::validate(&config).unwrap_err().key,
            "limits.connections.max_request_header_bytes"
        );
    }
}
