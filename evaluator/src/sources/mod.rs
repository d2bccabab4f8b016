//! Where flag state comes from: PostgreSQL in root mode ([`pg`]), an upstream evaluator in proxy
//! mode ([`upstream`]). Both implement [`crate::core::source::StateSource`].

pub mod follow;
pub mod pg;
pub mod upstream;
