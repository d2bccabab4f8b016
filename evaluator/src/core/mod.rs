//! The evaluation core: descriptors parsed into flag definitions ([`descriptor`]), the hot-swapped
//! [`registry`], the precedence rules ([`decide`], pure), the caches and their [`clock`], the
//! [`source`] interface state comes through, and the [`engine`] that ties them together.

pub mod cache;
pub mod changes;
pub mod clock;
pub mod decide;
pub mod descriptor;
pub mod engine;
#[cfg(any(test, feature = "test-support"))]
pub mod memory;
pub mod registry;
pub mod source;
