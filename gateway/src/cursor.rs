//! Cursors: where a client is in the log, one offset per partition.
//!
//! A cursor is the next offset to deliver of every partition of the log,
//! written as decimal numbers joined by `.` (`"1042"` for the embedded log,
//! which has one partition; `"17.0.233"` for a topic of three). Offsets are
//! the log's own (Kafka offsets, outbox `seq`s), so a cursor means the same on
//! every replica and survives a restart. A client's cursor moves forward on
//! each event delivered to it, and on keep-alives once everything before
//! the replica's position has been delivered, so a quiet client does not fall
//! behind what the replica keeps.

use std::fmt;

/// Most partitions a cursor may name.
pub const MAX_PARTITIONS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(Vec<i64>);

/// Why a cursor cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    /// Not a cursor at all.
    Malformed,
    /// For a log with another number of partitions.
    Partitions,
}

/// The offsets a cursor names, in partition order.
fn offsets(text: &str) -> Result<Vec<i64>, Invalid> {
    let text = text.trim();
    if text.is_empty() || text.len() > MAX_PARTITIONS * 20 {
        return Err(Invalid::Malformed);
    }
    text.split('.')
        .map(|part| {
            if part.is_empty() || part.len() > 18 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Invalid::Malformed);
            }
            part.parse::<i64>().map_err(|_| Invalid::Malformed)
        })
        .collect()
}

impl Cursor {
    pub fn new(offsets: Vec<i64>) -> Self {
        Self(offsets)
    }

    /// Parses a cursor of a log with `partitions` partitions.
    pub fn parse(text: &str, partitions: usize) -> Result<Self, Invalid> {
        let offsets = offsets(text)?;
        if offsets.len() != partitions {
            return Err(Invalid::Partitions);
        }
        Ok(Self(offsets))
    }

    /// Whether `text` is written as a cursor (of a log with any number of
    /// partitions).
    pub fn well_formed(text: &str) -> bool {
        offsets(text).is_ok()
    }

    pub fn offsets(&self) -> &[i64] {
        &self.0
    }

    /// Whether the event at `offset` of `partition` is at or past the cursor
    /// (not yet delivered).
    pub fn is_due(&self, partition: usize, offset: i64) -> bool {
        self.0.get(partition).is_some_and(|next| offset >= *next)
    }

    /// Moves past the event at `offset` of `partition`.
    pub fn advance(&mut self, partition: usize, offset: i64) {
        if let Some(next) = self.0.get_mut(partition) {
            *next = (*next).max(offset + 1);
        }
    }

    /// Moves every partition at least to `position`.
    pub fn catch_up(&mut self, position: &[i64]) -> bool {
        let mut moved = false;
        for (next, at) in self.0.iter_mut().zip(position) {
            if *at > *next {
                *next = *at;
                moved = true;
            }
        }
        moved
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, offset) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{offset}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_bad_ones_are_refused() {
        let c = Cursor::parse("17.0.233", 3).expect("valid");
        assert_eq!(c.offsets(), &[17, 0, 233]);
        assert_eq!(c.to_string(), "17.0.233");
        assert_eq!(Cursor::parse("5", 1).expect("one").to_string(), "5");
        for bad in [
            "",
            "a",
            "1..2",
            "-1",
            "1.-2",
            "1e3",
            "99999999999999999999",
            " . ",
        ] {
            assert_eq!(Cursor::parse(bad, 1), Err(Invalid::Malformed), "{bad:?}");
        }
        assert_eq!(Cursor::parse("1.2", 3), Err(Invalid::Partitions));
    }

    #[test]
    fn a_cursor_only_moves_forward() {
        let mut c = Cursor::new(vec![10, 20]);
        assert!(c.is_due(0, 10) && !c.is_due(0, 9) && !c.is_due(2, 50));
        c.advance(0, 14);
        c.advance(0, 3);
        assert_eq!(c.offsets(), &[15, 20]);
        assert!(c.catch_up(&[12, 25]));
        assert_eq!(c.offsets(), &[15, 25]);
        assert!(!c.catch_up(&[1, 2]));
    }
}
