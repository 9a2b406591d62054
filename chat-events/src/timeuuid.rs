//! Version-1 TimeUUIDs.
//!
//! A message id's timestamp is its send time and orders history. The
//! generator gives each process a random node id (multicast bit set, as
//! RFC 4122 §4.5 asks of ids not taken from a network card) and a random
//! clock sequence, so ids from different processes never collide; within a
//! process, each id's 100 ns tick is strictly greater than the previous one,
//! even when the wall clock stalls or steps back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use uuid::{Timestamp, Uuid};

/// 100 ns ticks between 1582-10-15 (the UUID epoch) and 1970-01-01.
pub const GREGORIAN_OFFSET: u64 = 0x01B2_1DD2_1381_4000;

/// A version-1 UUID, checked on construction.
///
/// Ordered by time, then by clock sequence and node, as Cassandra orders
/// `timeuuid` columns. (A UUID's byte order is not time order: the low 32
/// bits of the timestamp come first.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TimeUuid(Uuid);

impl Ord for TimeUuid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Bytes 0..8 are the timestamp and the version, so equal ticks and
        // equal bytes 8..16 mean equal UUIDs: consistent with `Eq`.
        self.ticks()
            .cmp(&other.ticks())
            .then_with(|| self.0.as_bytes()[8..].cmp(&other.0.as_bytes()[8..]))
    }
}

impl PartialOrd for TimeUuid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TimeUuidError {
    #[error("not a UUID")]
    Syntax,
    #[error("not a version-1 (time-based) UUID")]
    NotV1,
}

impl TimeUuid {
    pub fn parse(s: &str) -> Result<Self, TimeUuidError> {
        let uuid = Uuid::parse_str(s).map_err(|_| TimeUuidError::Syntax)?;
        Self::from_uuid(uuid)
    }

    pub fn from_uuid(uuid: Uuid) -> Result<Self, TimeUuidError> {
        if uuid.get_version_num() == 1 {
            Ok(Self(uuid))
        } else {
            Err(TimeUuidError::NotV1)
        }
    }

    pub fn uuid(self) -> Uuid {
        self.0
    }

    /// 100 ns ticks since 1582-10-15.
    pub fn ticks(self) -> u64 {
        self.0
            .get_timestamp()
            .map(|t| t.to_gregorian().0)
            .unwrap_or_default()
    }

    /// Milliseconds since the Unix epoch (negative before 1970).
    pub fn unix_millis(self) -> i64 {
        (self.ticks() as i64 - GREGORIAN_OFFSET as i64) / 10_000
    }

    /// The time as a UTC date-time, with 100 ns precision.
    pub fn datetime(self) -> time::OffsetDateTime {
        let nanos = (self.ticks() as i128 - GREGORIAN_OFFSET as i128) * 100;
        time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
    }

    /// A key that sorts like Cassandra sorts `timeuuid` (and like `Ord`):
    /// by time, then by the remaining bytes.
    pub fn sort_key(self) -> (u64, [u8; 16]) {
        (self.ticks(), *self.0.as_bytes())
    }
}

impl std::fmt::Display for TimeUuid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Hands out TimeUUIDs; share one per process.
#[derive(Debug)]
pub struct TimeUuidGenerator {
    node: [u8; 6],
    clock_seq: u16,
    last_tick: AtomicU64,
}

impl Default for TimeUuidGenerator {
    fn default() -> Self {
        Self::new()
    }
}

impl TimeUuidGenerator {
    pub fn new() -> Self {
        let mut rng = rand::rngs::OsRng;
        let mut node = [0u8; 6];
        rng.fill_bytes(&mut node);
        node[0] |= 0x01; // multicast bit: not a real MAC address
        let clock_seq = (rng.next_u32() & 0x3fff) as u16;
        Self {
            node,
            clock_seq,
            last_tick: AtomicU64::new(0),
        }
    }

    /// The next id: its tick is now, or one past the previous id's tick.
    pub fn next(&self) -> TimeUuid {
        let now = now_ticks();
        let mut last = self.last_tick.load(Ordering::Relaxed);
        let tick = loop {
            let candidate = now.max(last + 1);
            match self.last_tick.compare_exchange_weak(
                last,
                candidate,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break candidate,
                Err(actual) => last = actual,
            }
        };
        TimeUuid(Uuid::new_v1(
            Timestamp::from_gregorian_time(tick, self.clock_seq),
            &self.node,
        ))
    }
}

fn now_ticks() -> u64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    GREGORIAN_OFFSET + (since_epoch.as_nanos() / 100) as u64
}

/// The smallest TimeUUID at `ticks` (for range bounds).
pub fn min_at_ticks(ticks: u64) -> TimeUuid {
    TimeUuid(Uuid::new_v1(
        Timestamp::from_gregorian_time(ticks, 0),
        &[0; 6],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn ids_are_v1_unique_and_strictly_increasing() {
        let g = TimeUuidGenerator::new();
        let mut prev = g.next();
        let mut seen = HashSet::new();
        for _ in 0..100_000 {
            let id = g.next();
            assert_eq!(id.uuid().get_version_num(), 1);
            assert!(id.ticks() > prev.ticks());
            assert!(seen.insert(id));
            prev = id;
        }
    }

    #[test]
    fn concurrent_generation_never_repeats() {
        let g = std::sync::Arc::new(TimeUuidGenerator::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let g = g.clone();
                std::thread::spawn(move || (0..20_000).map(|_| g.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut all = HashSet::new();
        for h in handles {
            for id in h.join().expect("thread") {
                assert!(all.insert(id));
            }
        }
    }

    #[test]
    fn two_generators_differ_in_node_or_sequence() {
        let (a, b) = (TimeUuidGenerator::new(), TimeUuidGenerator::new());
        assert_ne!((a.node, a.clock_seq), (b.node, b.clock_seq));
    }

    #[test]
    fn the_timestamp_is_now() {
        let id = TimeUuidGenerator::new().next();
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_millis() as i64;
        assert!((id.unix_millis() - now_ms).abs() < 1000);
        assert_eq!(
            id.datetime().unix_timestamp(),
            id.unix_millis().div_euclid(1000)
        );
    }

    #[test]
    fn parse_accepts_only_v1() {
        let id = TimeUuidGenerator::new().next();
        assert_eq!(TimeUuid::parse(&id.to_string()), Ok(id));
        assert_eq!(
            TimeUuid::parse(&Uuid::new_v4().to_string()),
            Err(TimeUuidError::NotV1)
        );
        assert_eq!(TimeUuid::parse("nope"), Err(TimeUuidError::Syntax));
    }

    #[test]
    fn min_at_ticks_sorts_first_at_its_tick() {
        let id = TimeUuidGenerator::new().next();
        let floor = min_at_ticks(id.ticks());
        assert_eq!(floor.ticks(), id.ticks());
        assert!(floor.sort_key() <= id.sort_key());
    }

    #[test]
    fn ordering_is_time_order_not_byte_order() {
        let node = [1, 2, 3, 4, 5, 6];
        let at = |ticks: u64, seq: u16| {
            TimeUuid(Uuid::new_v1(
                Timestamp::from_gregorian_time(ticks, seq),
                &node,
            ))
        };
        // The low 32 bits of the timestamp wrap: the later id's first byte
        // is 0x00, the earlier one's 0xff.
        let earlier = at(0x1_ffff_ffff, 7);
        let later = at(0x2_0000_0000, 7);
        assert!(earlier.uuid() > later.uuid(), "byte order disagrees");
        assert!(earlier < later);
        let mut ids = vec![later, earlier];
        ids.sort();
        assert_eq!(ids, [earlier, later]);
        // Same time: clock sequence, then node.
        assert!(at(GREGORIAN_OFFSET, 1) < at(GREGORIAN_OFFSET, 2));
        assert_eq!(
            at(GREGORIAN_OFFSET, 3).cmp(&at(GREGORIAN_OFFSET, 3)),
            std::cmp::Ordering::Equal
        );
        // Consistent with sort_key.
        for (a, b) in [(earlier, later), (later, earlier), (earlier, earlier)] {
            assert_eq!(a.cmp(&b), a.sort_key().cmp(&b.sort_key()));
        }
        // And with min_at_ticks.
        assert!(min_at_ticks(later.ticks()) <= later);
        assert!(min_at_ticks(later.ticks()) > earlier);
    }
}
