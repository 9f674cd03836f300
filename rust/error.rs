//! The one error type of the crate. Every fallible kernel returns `Result<T, Error>`;
//! `py.rs` maps each variant to one Python exception class (all subclasses of `RlkdError`).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Group size is zero or does not divide the number of rewards.
    GroupSize(String),
    /// Two inputs that must have matching lengths do not (e.g. golds vs outputs).
    LengthMismatch(String),
    /// A prompt cannot be packed under the given budget / max length.
    Packing(String),
    /// Any other bad argument (unknown estimator name, negative eps, NaN reward, ...).
    InvalidArgument(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::GroupSize(m)
            | Error::LengthMismatch(m)
            | Error::Packing(m)
            | Error::InvalidArgument(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
