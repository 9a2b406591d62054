//! chat-service: chats, sending and TimeUUID history (not built yet; see the issue tracker).
