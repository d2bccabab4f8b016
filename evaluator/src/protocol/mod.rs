//! Wire details the server and the upstream client share: the Connect protocol ([`connect`]), the
//! hot responses' JSON ([`json`]), RPC
//! status codes and their Connect names ([`status`]), and W3C trace context in headers
//! ([`trace_context`]).

pub mod connect;
pub mod json;
pub mod status;
pub mod trace_context;
