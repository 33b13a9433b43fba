//! Generated protobuf types (package `netsy`) for our own `.proto` files under `proto/`.
//!
//! Owns: nothing but the generated code. Must never hold hand-written logic; encoding rules
//! (CRCs, framing) live in [`crate::datafile`].
#![allow(clippy::all, missing_docs, unreachable_pub)]

include!(concat!(env!("OUT_DIR"), "/netsy.rs"));
