//! Background tasks that keep the engine's inputs fresh: the descriptor file ([`descriptors`]) and
//! the kill set ([`kills`]).

pub mod descriptors;
pub mod kills;
