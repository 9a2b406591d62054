//! The gateway's limits, shared by the `gateway` binary and the all-in-one.

use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use crate::hub::HubLimits;

/// Bounds on the per-user streams (`/events`, `/ws`).
#[derive(Debug, Clone, clap::Args)]
pub struct EventLimits {
    /// Streams (SSE and WebSocket together) one user may have open at once
    /// on this replica; past it, 429 `too_many_streams`.
    #[arg(long, env = "EVENTS_MAX_PER_USER", default_value = "16")]
    pub events_max_per_user: NonZeroU32,

    /// Bytes of frames one stream may hold for a client that has not read
    /// them; a client that lets it fill is disconnected (it resumes with its
    /// cursor).
    #[arg(long, env = "EVENTS_QUEUE_BYTES", default_value = "262144")]
    pub events_queue_bytes: NonZeroU32,

    /// Bytes of recent events kept for clients that resume; a cursor older
    /// than what is kept gets a `reset`.
    #[arg(long, env = "EVENTS_RING_BYTES", default_value = "67108864")]
    pub events_ring_bytes: NonZeroU64,

    /// Events read back from the log at start, so cursors from before a
    /// restart resume exactly.
    #[arg(long, env = "EVENTS_BACKFILL", default_value = "100000")]
    pub events_backfill: NonZeroU64,

    /// At most one `typing` per user and chat goes out per this many
    /// milliseconds; more are dropped.
    #[arg(long, env = "TYPING_INTERVAL_MS", default_value = "1000")]
    pub typing_interval_ms: NonZeroU64,

    /// How long a user stays online after their last stream closes,
    /// milliseconds (a reconnect within it is not a presence change).
    #[arg(long, env = "PRESENCE_GRACE_MS", default_value = "5000")]
    pub presence_grace_ms: NonZeroU64,
}

impl EventLimits {
    pub fn hub(&self) -> HubLimits {
        HubLimits {
            queue_bytes: self.events_queue_bytes.get() as usize,
            ring_bytes: usize::try_from(self.events_ring_bytes.get()).unwrap_or(usize::MAX),
            max_per_user: self.events_max_per_user.get(),
            typing_interval: Duration::from_millis(self.typing_interval_ms.get()),
            presence_grace: Duration::from_millis(self.presence_grace_ms.get()),
        }
    }
}
