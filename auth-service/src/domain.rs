//! Validated input. Constructors are the only way in, so a `Username` in hand
//! is always well-formed.

use secrecy::SecretString;

/// Allowed username characters: ASCII letters, digits, `_`, `.` and `-`,
/// starting with a letter or digit, 3 to 32 characters. Case is kept for
/// display; uniqueness and lookup use the lower-cased [`Username::key`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    display: String,
    key: String,
}

pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 32;
pub const PASSWORD_MIN: usize = 8;
pub const PASSWORD_MAX: usize = 128;
pub const EMAIL_MAX: usize = 254;

impl Username {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let s = raw.trim();
        let len = s.chars().count();
        if !(USERNAME_MIN..=USERNAME_MAX).contains(&len) {
            return Err("must be 3 to 32 characters");
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err("may contain only ASCII letters, digits, '_', '.' and '-'");
        }
        if !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err("must start with a letter or digit");
        }
        Ok(Self {
            display: s.to_owned(),
            key: s.to_ascii_lowercase(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.display
    }

    /// The normalised form: unique, used for lookup and ordering.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// Normalises a search prefix the way usernames are normalised. Characters
/// no username can contain make the prefix match nothing.
pub fn search_prefix(raw: &str) -> Result<String, &'static str> {
    let s = raw.trim();
    if s.chars().count() > USERNAME_MAX {
        return Err("must be at most 32 characters");
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("may contain only ASCII letters, digits, '_', '.' and '-'");
    }
    Ok(s.to_ascii_lowercase())
}

/// A password of 8 to 128 characters. Never printed.
pub struct Password(SecretString);

impl Password {
    pub fn parse(raw: String) -> Result<Self, &'static str> {
        let len = raw.chars().count();
        if len < PASSWORD_MIN {
            return Err("must be at least 8 characters");
        }
        if len > PASSWORD_MAX {
            return Err("must be at most 128 characters");
        }
        Ok(Self(SecretString::from(raw)))
    }

    pub fn into_secret(self) -> SecretString {
        self.0
    }
}

/// An e-mail address: one `@`, a non-empty local part, a dotted domain, no
/// spaces, at most 254 characters. Deliverability is not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let s = raw.trim();
        let invalid = "must be an e-mail address";
        if s.len() > EMAIL_MAX || s.chars().any(char::is_whitespace) {
            return Err(invalid);
        }
        let (local, domain) = s.split_once('@').ok_or(invalid)?;
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.');
        if local.is_empty() || !domain_ok {
            return Err(invalid);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_trimmed_and_keyed_case_insensitively() {
        let u = Username::parse("  Alice_01 ").expect("valid");
        assert_eq!(u.as_str(), "Alice_01");
        assert_eq!(u.key(), "alice_01");
    }

    #[test]
    fn usernames_outside_the_rules_are_refused() {
        for bad in [
            "",
            "ab",
            "a b",
            "_abc",
            "ålice",
            "abc!",
            "a@b",
            &"x".repeat(33),
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Username::parse(&"x".repeat(32)).is_ok());
        assert!(Username::parse("a.b-c_d").is_ok());
    }

    #[test]
    fn password_length_is_counted_in_characters() {
        assert!(Password::parse("1234567".into()).is_err());
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("é".repeat(128)).is_ok());
        assert!(Password::parse("é".repeat(129)).is_err());
    }

    #[test]
    fn emails() {
        assert!(Email::parse("a@b.co").is_ok());
        for bad in [
            "", "a", "@b.co", "a@b", "a@.b", "a@b.", "a b@c.d", "a@b@c.d",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn search_prefix_normalises_and_refuses_odd_characters() {
        assert_eq!(search_prefix(" AL ").as_deref(), Ok("al"));
        assert_eq!(search_prefix("").as_deref(), Ok(""));
        assert!(search_prefix("a%").is_err());
    }
}
