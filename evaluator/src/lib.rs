//! The pbflags evaluator: descriptor parsing, the flag registry and its hot reload, the evaluation
//! engine, and (in later modules) the sources and servers around it.

pub mod descriptor;
