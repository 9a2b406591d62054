//! The log the gateway reads: every partition, from a little before the
//! end (so recent cursors can resume after a restart), for ever.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chat_events::Event;
use chat_service::outbox::{OutboxReader, OutboxWake};

use crate::frames::Routed;
use crate::hub::Hub;

/// One record of the log.
pub struct Record {
    pub partition: usize,
    pub offset: i64,
    pub payload: Vec<u8>,
}

#[async_trait]
pub trait LogSource: Send + 'static {
    /// The next offset of each partition where reading starts.
    fn start(&self) -> Vec<i64>;
    /// The next offset of each partition when reading started: the hub is
    /// ready once it has read that far.
    fn head(&self) -> Vec<i64>;
    /// The next records (waits for some).
    async fn next(&mut self) -> anyhow::Result<Vec<Record>>;
    fn backend(&self) -> &'static str;
}

/// Records read from the outbox at once.
const OUTBOX_PAGE: i64 = 512;

/// chat-service's outbox in `chat.db`: one partition, offsets are `seq`s.
pub struct EmbeddedLog {
    reader: OutboxReader,
    wake: Option<OutboxWake>,
    next: i64,
    start: i64,
    head: i64,
    poll: Duration,
}

impl EmbeddedLog {
    /// Starts `backfill` entries before the end.
    pub async fn open(
        reader: OutboxReader,
        wake: Option<OutboxWake>,
        backfill: u64,
        poll: Duration,
    ) -> anyhow::Result<Self> {
        let head = reader.head().await? + 1;
        let start = (head - i64::try_from(backfill).unwrap_or(i64::MAX / 2)).max(1);
        Ok(Self {
            reader,
            wake,
            next: start,
            start,
            head,
            poll,
        })
    }
}

#[async_trait]
impl LogSource for EmbeddedLog {
    fn start(&self) -> Vec<i64> {
        vec![self.start]
    }

    fn head(&self) -> Vec<i64> {
        vec![self.head]
    }

    async fn next(&mut self) -> anyhow::Result<Vec<Record>> {
        loop {
            let entries = self.reader.after(self.next - 1, OUTBOX_PAGE).await?;
            if let Some(last) = entries.last() {
                self.next = last.seq + 1;
                return Ok(entries
                    .into_iter()
                    .map(|e| Record {
                        partition: 0,
                        offset: e.seq,
                        payload: e.payload,
                    })
                    .collect());
            }
            match &mut self.wake {
                Some(wake) => wake.wait(self.poll).await,
                None => tokio::time::sleep(self.poll).await,
            }
        }
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

/// Reads `source` into `hub` until `stop`; the hub is ready once it has
/// read what the log held at the start. Returns on stop, or when the log
/// fails (after `retry` attempts spaced a second apart).
pub async fn ingest(
    mut source: Box<dyn LogSource>,
    hub: Arc<Hub>,
    stop: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let head = source.head();
    let reached = |hub: &Hub| hub.position().iter().zip(&head).all(|(p, h)| p >= h);
    if reached(&hub) {
        hub.set_ready();
    }
    tokio::pin!(stop);
    loop {
        let records = tokio::select! {
            () = &mut stop => return Ok(()),
            records = source.next() => records,
        };
        let records = match records {
            Ok(records) => records,
            Err(e) => {
                tracing::error!(error = %e, "reading the log");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        for record in records {
            match Event::decode(&record.payload) {
                Ok(event) => hub.ingest(Routed::new(record.partition, record.offset, &event)),
                Err(e) => {
                    tracing::debug!(error = %e, "skipping a record");
                    hub.skip(record.partition, record.offset);
                }
            }
        }
        if !hub.is_ready() && reached(&hub) {
            tracing::info!("the gateway has read the log: ready");
            hub.set_ready();
        }
    }
}
