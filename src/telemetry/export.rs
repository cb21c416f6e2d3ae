//! The export queue: ended spans into a bounded channel (never blocking a check), and the task
//! that sends them to the collector in batches.

use std::sync::atomic::Ordering;
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use tokio::sync::mpsc;

use super::{DROPPED_EXPORT_FAILED, DROPPED_QUEUE_FULL};

/// Ended spans into a bounded queue; never blocks, never waits for the collector.
pub(super) struct ExportQueue {
    pub(super) sender: mpsc::Sender<SpanData>,
}

impl std::fmt::Debug for ExportQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportQueue")
            .field("capacity", &self.sender.max_capacity())
            .finish()
    }
}

impl SpanProcessor for ExportQueue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.sender.try_send(span).is_err() {
            DROPPED_QUEUE_FULL.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Largest batch per export call, and the longest a span waits for one to fill.
const BATCH: usize = 512;
const BATCH_DELAY: Duration = Duration::from_secs(1);

pub(super) async fn export_loop(
    mut receiver: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        let mut closed = false;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let spans = batch.len() as u64;
            if let Err(error) = exporter.export(std::mem::take(&mut batch)).await {
                tracing::debug!(%error, spans, "trace export failed");
                DROPPED_EXPORT_FAILED.fetch_add(spans, Ordering::Relaxed);
            }
        }
        if closed {
            return;
        }
    }
}
