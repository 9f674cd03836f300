//! The only PyO3 file: `rlkd._core`.
//!
//! Rules at this boundary: the GIL is released around batch work, numeric batches go in and
//! out as numpy arrays, and every `crate::Error` becomes one exception class below (all of
//! them subclass `RlkdError`, itself a `ValueError`). No Rust panic reaches Python.

use pyo3::create_exception;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::Error;

create_exception!(_core, RlkdError, PyValueError, "Base class of every error raised by rlkd._core.");
create_exception!(_core, GroupSizeError, RlkdError, "Group size is zero or does not divide the number of rewards.");
create_exception!(_core, LengthMismatchError, RlkdError, "Inputs that must have equal lengths do not.");
create_exception!(_core, PackingError, RlkdError, "A judge prompt cannot be packed under the given limits.");
create_exception!(_core, InvalidArgumentError, RlkdError, "An argument is out of its documented range.");

/// The single place where Rust errors become Python exceptions.
impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let msg = err.to_string();
        match err {
            Error::GroupSize(_) => GroupSizeError::new_err(msg),
            Error::LengthMismatch(_) => LengthMismatchError::new_err(msg),
            Error::Packing(_) => PackingError::new_err(msg),
            Error::InvalidArgument(_) => InvalidArgumentError::new_err(msg),
        }
    }
}

// ---- extract / verify (owned by the text-kernels work) ---------------------------------------
// BEGIN text kernels
// END text kernels

// ---- advantages / packing (owned by the numeric-kernels work) --------------------------------
// BEGIN numeric kernels
// END numeric kernels

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("RlkdError", py.get_type::<RlkdError>())?;
    m.add("GroupSizeError", py.get_type::<GroupSizeError>())?;
    m.add("LengthMismatchError", py.get_type::<LengthMismatchError>())?;
    m.add("PackingError", py.get_type::<PackingError>())?;
    m.add("InvalidArgumentError", py.get_type::<InvalidArgumentError>())?;
    // BEGIN register text kernels
    // END register text kernels
    // BEGIN register numeric kernels
    // END register numeric kernels
    Ok(())
}
