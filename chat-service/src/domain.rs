//! Validated input.

use chat_events::TimeUuid;

/// Longest message, in characters.
pub const MAX_TEXT_CHARS: usize = 4000;
/// Longest `client_message_id`, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 128;
pub const DEFAULT_QUANTITY: usize = 10;
pub const MAX_QUANTITY: usize = 100;

/// Message text: not empty (nor only whitespace), at most
/// [`MAX_TEXT_CHARS`] characters. Stored exactly as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageText(String);

#[derive(Debug, PartialEq, Eq)]
pub enum TextError {
    Empty,
    TooLong,
}

impl MessageText {
    pub fn parse(raw: String) -> Result<Self, TextError> {
        if raw.trim().is_empty() {
            return Err(TextError::Empty);
        }
        if raw.chars().count() > MAX_TEXT_CHARS {
            return Err(TextError::TooLong);
        }
        Ok(Self(raw))
    }

    /// Text read back from a store, which holds only parsed text.
    pub fn stored(text: String) -> Self {
        Self(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// The client's idempotency key: 1 to 128 bytes of printable ASCII.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientMessageId(String);

impl ClientMessageId {
    pub fn parse(raw: String) -> Result<Self, &'static str> {
        if raw.is_empty() || raw.len() > MAX_CLIENT_ID_BYTES {
            return Err("client_message_id must be 1 to 128 characters");
        }
        if !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("client_message_id must be printable ASCII without spaces");
        }
        Ok(Self(raw))
    }

    /// A key read back from a store, which holds only parsed keys.
    pub fn stored(key: String) -> Self {
        Self(key)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

/// Page size of history: 1 to [`MAX_QUANTITY`], default [`DEFAULT_QUANTITY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quantity(usize);

impl Quantity {
    pub fn parse(raw: Option<&str>) -> Result<Self, &'static str> {
        let Some(raw) = raw else {
            return Ok(Self(DEFAULT_QUANTITY));
        };
        match raw.parse::<usize>() {
            Ok(n) if (1..=MAX_QUANTITY).contains(&n) => Ok(Self(n)),
            _ => Err("quantity must be an integer from 1 to 100"),
        }
    }

    pub fn get(self) -> usize {
        self.0
    }
}

/// The `time` of a history request: a version-1 UUID, or absent.
pub fn parse_time(raw: Option<&str>) -> Result<Option<TimeUuid>, &'static str> {
    match raw {
        None | Some("") => Ok(None),
        Some(s) => TimeUuid::parse(s)
            .map(Some)
            .map_err(|_| "time must be a version-1 (time-based) UUID"),
    }
}

/// The `after` of a catch-up request: a version-1 UUID, or absent.
pub fn parse_after(raw: Option<&str>) -> Result<Option<TimeUuid>, &'static str> {
    parse_time(raw).map_err(|_| "after must be a version-1 (time-based) UUID")
}

/// Longest group title, in characters.
pub const MAX_TITLE_CHARS: usize = 100;

/// A group's title: 1 to [`MAX_TITLE_CHARS`] characters, not only
/// whitespace. Stored exactly as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub fn parse(raw: String) -> Result<Self, &'static str> {
        if raw.trim().is_empty() || raw.chars().count() > MAX_TITLE_CHARS {
            return Err("title must be 1 to 100 characters, not only spaces");
        }
        Ok(Self(raw))
    }

    pub fn into_inner(self) -> String {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_rules() {
        assert_eq!(MessageText::parse("".into()), Err(TextError::Empty));
        assert_eq!(MessageText::parse(" \n\t".into()), Err(TextError::Empty));
        assert!(MessageText::parse(" hi ".into()).is_ok());
        assert!(MessageText::parse("é".repeat(MAX_TEXT_CHARS)).is_ok());
        assert_eq!(
            MessageText::parse("é".repeat(MAX_TEXT_CHARS + 1)),
            Err(TextError::TooLong)
        );
    }

    #[test]
    fn quantity_rules() {
        assert_eq!(Quantity::parse(None).map(Quantity::get), Ok(10));
        assert_eq!(Quantity::parse(Some("1")).map(Quantity::get), Ok(1));
        assert_eq!(Quantity::parse(Some("100")).map(Quantity::get), Ok(100));
        for bad in ["0", "101", "-1", "ten", "", "1.5"] {
            assert!(Quantity::parse(Some(bad)).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_ids() {
        assert!(ClientMessageId::parse("abc-123_X".into()).is_ok());
        assert!(ClientMessageId::parse(String::new()).is_err());
        assert!(ClientMessageId::parse("a b".into()).is_err());
        assert!(ClientMessageId::parse("x".repeat(129)).is_err());
    }

    #[test]
    fn title_rules() {
        assert!(Title::parse("team".into()).is_ok());
        assert!(Title::parse("é".repeat(MAX_TITLE_CHARS)).is_ok());
        assert!(Title::parse("é".repeat(MAX_TITLE_CHARS + 1)).is_err());
        assert!(Title::parse(" \t".into()).is_err());
        assert!(Title::parse(String::new()).is_err());
    }

    #[test]
    fn time_must_be_v1() {
        assert_eq!(parse_time(None), Ok(None));
        assert!(parse_time(Some(&uuid::Uuid::new_v4().to_string())).is_err());
        assert!(parse_time(Some("yesterday")).is_err());
        let id = chat_events::TimeUuidGenerator::new().next();
        assert_eq!(parse_time(Some(&id.to_string())), Ok(Some(id)));
    }
}
