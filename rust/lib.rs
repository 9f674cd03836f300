//! rlkd's pure, deterministic, CPU-bound kernels.
//!
//! Everything here is plain Rust (`cargo test`, `cargo bench` need no Python); the only
//! PyO3 code lives in `py.rs`, compiled with the `python` feature into `rlkd._core`.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod advantage;
pub mod error;
pub mod extract;
pub mod pack;
pub mod verify;

#[cfg(feature = "python")]
mod py;

pub use error::{Error, Result};
