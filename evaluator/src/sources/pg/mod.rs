//! PostgreSQL: connection settings, migrations, the state source of root mode, descriptor sync and
//! flag administration. The schema is pbflags v0.6's (`migrations/`).

pub mod admin;
pub mod changes;
pub mod db;
pub mod source;
pub mod sync;
pub mod values;
