//! Background tasks that keep the engine's inputs fresh: the descriptor file ([`descriptors`]) and
//! the kill set ([`kills`]), and the one file-watching mechanism ([`files`]) the descriptor file and
//! the server's TLS certificate reload on.

pub mod descriptors;
pub mod files;
pub mod kills;
