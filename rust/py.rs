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
use numpy::PyArray1;
use pyo3::pybacked::PyBackedStr;

/// Verdict of `verify`; int values are API: NotEqual=0, Equal=1, Unknown=2, NoAnswer=3.
#[pyclass(name = "Verdict", module = "rlkd._core", eq, eq_int, hash, frozen)]
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub enum PyVerdict {
    NotEqual = 0,
    Equal = 1,
    Unknown = 2,
    NoAnswer = 3,
}

impl From<crate::verify::Verdict> for PyVerdict {
    fn from(v: crate::verify::Verdict) -> Self {
        use crate::verify::Verdict as V;
        match v {
            V::NotEqual => PyVerdict::NotEqual,
            V::Equal => PyVerdict::Equal,
            V::Unknown => PyVerdict::Unknown,
            V::NoAnswer => PyVerdict::NoAnswer,
        }
    }
}

/// The final answer of a response (boxed, `####`, answer phrase, then last math/number unless
/// `strict`), or None.
#[pyfunction]
#[pyo3(signature = (text, strict = false))]
fn extract_answer(text: &str, strict: bool) -> Option<String> {
    crate::extract::extract_answer(text, strict).map(str::to_owned)
}

/// `extract_answer` over a sequence of strings; releases the GIL (parallel when large).
#[pyfunction]
#[pyo3(signature = (texts, strict = false))]
fn extract_answers(py: Python<'_>, texts: Vec<PyBackedStr>, strict: bool) -> Vec<Option<String>> {
    py.detach(|| crate::extract::extract_answers(&texts, strict))
}

/// Canonical text of an answer (`\dfrac{6}{4}` -> `1.5`, `1,000` -> `1000`).
#[pyfunction]
fn normalize_answer(text: &str) -> String {
    crate::verify::normalize_answer(text)
}

/// Verdict for (gold, output): gold is a bare answer or a marked solution, output a whole response.
#[pyfunction]
fn verify(gold: &str, output: &str) -> PyVerdict {
    crate::verify::verify(gold, output).into()
}

/// Verdict codes (int8) for aligned golds and outputs; releases the GIL (parallel when large).
#[pyfunction]
fn verify_batch<'py>(
    py: Python<'py>,
    golds: Vec<PyBackedStr>,
    outputs: Vec<PyBackedStr>,
) -> PyResult<Bound<'py, PyArray1<i8>>> {
    let verdicts = py.detach(|| crate::verify::verify_batch(&golds, &outputs))?;
    let codes: Vec<i8> = verdicts.into_iter().map(|v| v as i8).collect();
    Ok(PyArray1::from_vec(py, codes))
}
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
    m.add_class::<PyVerdict>()?;
    m.add_function(wrap_pyfunction!(extract_answer, m)?)?;
    m.add_function(wrap_pyfunction!(extract_answers, m)?)?;
    m.add_function(wrap_pyfunction!(normalize_answer, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(verify_batch, m)?)?;
    // END register text kernels
    // BEGIN register numeric kernels
    // END register numeric kernels
    Ok(())
}
