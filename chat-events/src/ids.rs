//! Typed ids: a chat id and a user id are both UUIDs, and mixing them up
//! compiles no more. Both serialise as the plain UUID string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            pub const fn uuid(self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// A chat: for a direct chat, derived from its two members
    /// ([`crate::chat_id`]).
    ChatId
);

uuid_id!(
    /// A user, as auth-service assigned it (the token's `sub`).
    UserId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_plain_uuids_on_the_wire_and_in_text() {
        let raw = Uuid::new_v4();
        let chat = ChatId::from(raw);
        assert_eq!(
            serde_json::to_string(&chat).expect("valid"),
            format!("\"{raw}\"")
        );
        assert_eq!(
            serde_json::from_str::<UserId>(&format!("\"{raw}\""))
                .expect("valid")
                .uuid(),
            raw
        );
        assert_eq!(chat.to_string().parse::<ChatId>().expect("valid"), chat);
        assert!("not-a-uuid".parse::<ChatId>().is_err());
    }
}
