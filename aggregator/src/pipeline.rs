//! Drives source → batcher → sink.
//!
//! - Each record is applied to the batcher (the chat's state is first
//!   restored from the sink if this process has not seen the chat yet).
//!   Records already waiting in the source are applied together (up to
//!   [`DRAIN`]), so one write can carry several of them.
//! - A new batch is written at once (after that drain); growth is written
//!   when due (at most one write per document per flush interval);
//!   everything pending is written at shutdown. Writes for different chats
//!   run concurrently (up to [`CONCURRENT_WRITES`]); one chat's writes never
//!   overlap.
//! - Progress is committed to the source only below the lowest position
//!   whose effect is not yet written, so a crash at any moment replays from
//!   there and the batcher drops what the documents already hold.
//! - A failing sink is retried with backoff, holding the pipeline (and its
//!   commits) back; a write refused as stale ends the pipeline with an error
//!   so the process restarts from its committed position.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use chat_events::{ChatKind, Event};

use crate::batcher::{Applied, Batcher, Incoming, Limits, Write};
use crate::sink::{Sink, SinkError};
use crate::source::{Delivery, Source};

const TICK: Duration = Duration::from_millis(50);
/// Records applied before the writes they made due are sent.
pub const DRAIN: usize = 512;
/// Sink writes in flight at once (each for a different chat).
pub const CONCURRENT_WRITES: usize = 16;
const LAG_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Source(#[from] crate::source::SourceError),
    #[error(transparent)]
    Stale(SinkError),
}

pub struct Pipeline {
    source: Box<dyn Source>,
    sink: Arc<dyn Sink>,
    batcher: Batcher,
    counts: Arc<Counts>,
}

/// This process's totals, for the documents-per-message gauge.
#[derive(Default)]
struct Counts {
    messages: std::sync::atomic::AtomicU64,
    documents: std::sync::atomic::AtomicU64,
}

impl Counts {
    fn add_documents(&self, n: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let documents = self.documents.fetch_add(n, Relaxed) + n;
        let messages = self.messages.load(Relaxed).max(1);
        metrics::gauge!("aggregator_documents_per_message").set(documents as f64 / messages as f64);
    }
}

impl Pipeline {
    pub fn new(source: Box<dyn Source>, sink: Arc<dyn Sink>, limits: Limits) -> Self {
        Self {
            source,
            sink,
            batcher: Batcher::new(limits),
            counts: Arc::default(),
        }
    }

    /// Runs until `shutdown` completes, then flushes and commits.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), PipelineError> {
        let mut shutdown = std::pin::pin!(shutdown);
        // Due growth is looked for at least as often as it may be written.
        let every = TICK
            .min(self.batcher.limits().flush_interval)
            .max(Duration::from_millis(1));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_lag = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                _ = tick.tick() => {
                    self.flush_due().await?;
                    self.source.commit(&self.batcher.uncovered()).await?;
                    if last_lag.elapsed() >= LAG_EVERY {
                        last_lag = Instant::now();
                        if let Some(lag) = self.source.lag().await {
                            metrics::gauge!("aggregator_consumer_lag").set(lag as f64);
                        }
                    }
                }
                delivery = self.source.next() => {
                    let mut urgent = Vec::new();
                    self.handle(delivery?, &mut urgent).await?;
                    // Whatever else is already waiting joins this round.
                    for _ in 1..DRAIN {
                        match futures::FutureExt::now_or_never(self.source.next()) {
                            Some(delivery) => self.handle(delivery?, &mut urgent).await?,
                            None => break,
                        }
                    }
                    let now = Instant::now();
                    let writes = urgent.into_iter().filter_map(|chat| self.batcher.take_write(chat, now)).collect();
                    self.write_all(writes).await?;
                }
            }
        }
        tracing::info!("aggregator draining");
        let writes = self.batcher.take_all(Instant::now());
        self.write_all(writes).await?;
        self.source.close(&self.batcher.uncovered()).await?;
        tracing::info!("aggregator stopped");
        Ok(())
    }

    /// Applies one record; a chat whose new batch must be written at once
    /// is added to `urgent`.
    async fn handle(
        &mut self,
        delivery: Delivery,
        urgent: &mut Vec<uuid::Uuid>,
    ) -> Result<(), PipelineError> {
        let (incoming, position) = match delivery {
            Delivery::Event(Event::Message(m), position) => {
                metrics::counter!("aggregator_messages_in_total").increment(1);
                self.counts
                    .messages
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                (Incoming::from(&m), position)
            }
            // A group's timeline events are batches of their own; a direct
            // chat's timeline holds only messages.
            Delivery::Event(Event::Chat(e), position) if e.chat_kind == ChatKind::Group => {
                metrics::counter!("aggregator_events_in_total").increment(1);
                (Incoming::from(&e), position)
            }
            Delivery::Event(Event::Read(r), position) => {
                metrics::counter!("aggregator_reads_in_total").increment(1);
                let chat = r.chat_id.uuid();
                self.know(chat).await?;
                self.batcher.apply_read(&r, position);
                return Ok(());
            }
            Delivery::Event(Event::Chat(_), _) => return Ok(()),
            Delivery::Undecodable(position, why) => {
                metrics::counter!("aggregator_undecodable_total").increment(1);
                tracing::warn!(
                    ?position,
                    why,
                    "skipping a record that is not a v1 event of a known type"
                );
                return Ok(());
            }
        };
        let chat = incoming.chat_id;
        self.know(chat).await?;
        match self.batcher.apply(incoming, position) {
            Applied::Duplicate => {
                metrics::counter!("aggregator_duplicates_total").increment(1);
            }
            Applied::Appended => {}
            Applied::Started => {
                metrics::counter!("aggregator_batches_started_total").increment(1);
                if !urgent.contains(&chat) {
                    urgent.push(chat);
                }
            }
        }
        Ok(())
    }

    /// Loads the chat's state from the sink unless it is loaded.
    async fn know(&mut self, chat: uuid::Uuid) -> Result<(), PipelineError> {
        if !self.batcher.knows(chat) {
            let newest = self
                .retry(|sink| async move { sink.newest_batch(chat).await })
                .await?;
            let reads = self
                .retry(|sink| async move { sink.read_horizons(chat).await })
                .await?;
            self.batcher.restore_with_reads(chat, newest, reads);
        }
        Ok(())
    }

    async fn flush_due(&mut self) -> Result<(), PipelineError> {
        let now = Instant::now();
        let writes = self
            .batcher
            .due(now)
            .into_iter()
            .filter_map(|chat| self.batcher.take_write(chat, now))
            .collect();
        self.write_all(writes).await
    }

    /// Stores the writes (one per chat) concurrently; returns when all are
    /// stored, or at the first stale refusal.
    async fn write_all(&self, writes: Vec<Write>) -> Result<(), PipelineError> {
        use futures::StreamExt;
        let mut results = futures::stream::iter(writes)
            .map(|write| {
                let (sink, counts) = (self.sink.clone(), self.counts.clone());
                async move { write_one(sink, counts, write).await }
            })
            .buffer_unordered(CONCURRENT_WRITES);
        while let Some(result) = results.next().await {
            result?;
        }
        Ok(())
    }

    /// Runs `op` until it succeeds, backing off while the sink is down.
    async fn retry<T, F, Fut>(&self, op: F) -> Result<T, PipelineError>
    where
        F: Fn(Arc<dyn Sink>) -> Fut,
        Fut: Future<Output = Result<T, SinkError>>,
    {
        retry(self.sink.clone(), op).await
    }
}

async fn write_one(
    sink: Arc<dyn Sink>,
    counts: Arc<Counts>,
    write: Write,
) -> Result<(), PipelineError> {
    let documents = retry(sink, |sink| {
        let write = write.clone();
        async move { sink.write(&write).await }
    })
    .await?;
    metrics::counter!("aggregator_writes_total").increment(1);
    metrics::counter!("aggregator_documents_written_total").increment(documents as u64);
    counts.add_documents(documents as u64);
    Ok(())
}

async fn retry<T, F, Fut>(sink: Arc<dyn Sink>, op: F) -> Result<T, PipelineError>
where
    F: Fn(Arc<dyn Sink>) -> Fut,
    Fut: Future<Output = Result<T, SinkError>>,
{
    {
        let mut delay = Duration::from_millis(100);
        loop {
            match op(sink.clone()).await {
                Ok(value) => return Ok(value),
                Err(stale @ SinkError::Stale(_)) => return Err(PipelineError::Stale(stale)),
                Err(SinkError::Unavailable(e)) => {
                    metrics::counter!("aggregator_sink_errors_total").increment(1);
                    tracing::warn!(error = %e, retry_in = ?delay, "sink unavailable");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
