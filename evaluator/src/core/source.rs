//! The source of runtime flag state, as the engine sees it: a trait the PostgreSQL store and the
//! upstream client implement, and the values they return.
//!
//! "Not found" is not an error: an absent flag row is `Ok(None)` and an entity without overrides is
//! an empty list. Errors mean the source could not answer (unreachable, timed out, refused).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use pbflags_proto::v1::{FlagValue, State};

/// Global state of one flag, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct FlagState {
    /// ENABLED, DEFAULT or KILLED (anything else decodes as UNSPECIFIED).
    pub state: State,
    /// The runtime value, if any.
    pub value: Option<FlagValue>,
    /// True when the flag was removed from the descriptors and archived.
    pub archived: bool,
}

/// One per-entity override, as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The flag.
    pub flag_id: String,
    /// The entity (user id, tenant id, ...).
    pub entity_id: String,
    /// ENABLED, DEFAULT or KILLED.
    pub state: State,
    /// The override value, if any.
    pub value: Option<FlagValue>,
}

/// What kind of failure a source reports; kept so the server can map it to an RPC code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The source is unreachable or failed.
    Unavailable,
    /// The source did not answer in time.
    Timeout,
    /// The source rejected the request as invalid.
    InvalidArgument,
    /// The source answered, but with something that could not be understood, or failed inside.
    Internal,
    /// The source does not know what was asked for (an upstream's NotFound on a state RPC).
    NotFound,
    /// The source refused the caller's credentials.
    Unauthenticated,
    /// The source refused the caller.
    PermissionDenied,
    /// The source is overloaded or the request too large.
    ResourceExhausted,
    /// The source does not implement the call.
    Unimplemented,
}

/// A source failure. Cheap to clone: one failure is shared by every evaluation that waited on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// The category.
    pub kind: ErrorKind,
    /// What happened, for logs. Never contains credentials.
    pub message: Arc<str>,
}

impl SourceError {
    /// A failure of `kind` described by `message`.
    pub fn new(kind: ErrorKind, message: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The source is unavailable.
    pub fn unavailable(message: impl Into<Arc<str>>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for SourceError {}

/// Result of a source call.
pub type SourceResult<T> = Result<T, SourceError>;

/// Where runtime state comes from: PostgreSQL in root mode, an upstream evaluator in proxy mode.
///
/// Implementations apply their own timeouts (`fetch_timeout`) and must not panic.
pub trait StateSource: Send + Sync + 'static {
    /// The global state of one flag; `Ok(None)` when there is no row.
    fn flag_state(&self, flag_id: &str) -> BoxFuture<'_, SourceResult<Option<FlagState>>>;

    /// The global state of several flags in one call; flags without a row are absent from the map.
    fn flag_states<'a>(
        &'a self,
        flag_ids: &'a [String],
    ) -> BoxFuture<'a, SourceResult<HashMap<String, FlagState>>>;

    /// The overrides of `entity_id`, restricted to `flag_ids` unless it is empty.
    fn overrides<'a>(
        &'a self,
        entity_id: &'a str,
        flag_ids: &'a [String],
    ) -> BoxFuture<'a, SourceResult<Vec<Override>>>;

    /// Ids of globally killed flags.
    fn killed_flags(&self) -> BoxFuture<'_, SourceResult<Vec<String>>>;
}
