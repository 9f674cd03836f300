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
use pyo3::types::PyString;

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
fn extract_answer(text: &Bound<'_, PyString>, strict: bool) -> PyResult<Option<String>> {
    Ok(crate::extract::extract_answer(&utf8(text, "text")?, strict).map(str::to_owned))
}

/// A Python str as UTF-8; a lone surrogate (`"\ud800"`) is an InvalidArgumentError, not a
/// UnicodeEncodeError outside rlkd's error hierarchy.
fn utf8<'a>(text: &'a Bound<'_, PyString>, name: &str) -> PyResult<std::borrow::Cow<'a, str>> {
    text.to_cow().map_err(|_| {
        InvalidArgumentError::new_err(format!("{name} holds a lone surrogate (e.g. '\\ud800'): not valid Unicode text"))
    })
}

/// The strings of a batch as UTF-8. One holding a lone surrogate (`"\ud800"`: never a
/// tokenizer's output, but `json.loads` makes one from a `\ud800` escape) is read with each
/// surrogate replaced by U+FFFD, as Python's `errors="replace"` does: one bad row must not
/// fail a batch (the scalar functions raise InvalidArgumentError instead; see `utf8`).
fn batch_texts<'a>(texts: &'a [Bound<'_, PyString>]) -> Vec<std::borrow::Cow<'a, str>> {
    texts.iter().map(|t| t.to_cow().unwrap_or_else(|_| t.to_string_lossy())).collect()
}

/// `extract_answer` over a sequence of strings; releases the GIL (parallel when large).
#[pyfunction]
#[pyo3(signature = (texts, strict = false))]
fn extract_answers(py: Python<'_>, texts: Vec<Bound<'_, PyString>>, strict: bool) -> Vec<Option<String>> {
    let texts = batch_texts(&texts);
    py.detach(|| crate::extract::extract_answers(&texts, strict))
}

/// For each response: does its final answer hedge (a final line boxing two or more different values, or "16 or 18")?
/// Releases the GIL (parallel when large).
#[pyfunction]
fn hedges(py: Python<'_>, texts: Vec<Bound<'_, PyString>>) -> Vec<bool> {
    let texts = batch_texts(&texts);
    py.detach(|| crate::verify::hedges_batch(&texts))
}

/// Canonical text of an answer (`\dfrac{6}{4}` -> `1.5`, `1,000` -> `1000`).
#[pyfunction]
fn normalize_answer(text: &Bound<'_, PyString>) -> PyResult<String> {
    Ok(crate::verify::normalize_answer(&utf8(text, "text")?))
}

/// Verdict for (gold, output): gold is a bare answer or a marked solution, output a whole response.
#[pyfunction]
fn verify(gold: &Bound<'_, PyString>, output: &Bound<'_, PyString>) -> PyResult<PyVerdict> {
    Ok(crate::verify::verify(&utf8(gold, "gold")?, &utf8(output, "output")?).into())
}

/// Verdict codes (int8) for aligned golds and outputs; releases the GIL (parallel when large).
#[pyfunction]
fn verify_batch<'py>(
    py: Python<'py>,
    golds: Vec<Bound<'py, PyString>>,
    outputs: Vec<Bound<'py, PyString>>,
) -> PyResult<Bound<'py, PyArray1<i8>>> {
    let (golds, outputs) = (batch_texts(&golds), batch_texts(&outputs));
    let verdicts = py.detach(|| crate::verify::verify_batch(&golds, &outputs))?;
    let codes: Vec<i8> = verdicts.into_iter().map(|v| v as i8).collect();
    Ok(PyArray1::from_vec(py, codes))
}
// END text kernels

// ---- advantages / packing (owned by the numeric-kernels work) --------------------------------
// BEGIN numeric kernels
// Numeric kernels: float32 rewards/advantages and int64 token ids as numpy arrays. Inputs are
// converted with the GIL held (zero-copy for contiguous arrays of the right dtype), then the
// kernel runs with the GIL released.
// (In a module of their own so that their imports cannot clash with the text kernels'.)
mod numeric {
    use super::*;
    use std::borrow::Cow;

    use numpy::ndarray::Array2;
    use pyo3::types::PyList;
    use numpy::prelude::*;
    use numpy::{PyArray1, PyReadonlyArray1};

    use crate::advantage::{self, Estimator};
    use crate::pack::{self, Layout, PackOptions, PaddingSide, TokenId, Truncation};

    type Float32Array<'py> = Bound<'py, PyArray1<f32>>;

    /// `obj` as a 1-D numpy array of `dtype_name`, converting other dtypes and sequences with
    /// `numpy.asarray` (so float64 rewards become float32). Non-1-D input is an InvalidArgumentError.
    fn as_numpy_1d<'py, T: numpy::Element>(
        obj: &Bound<'py, PyAny>,
        name: &str,
        dtype_name: &str,
    ) -> PyResult<PyReadonlyArray1<'py, T>> {
        if let Ok(array) = obj.cast::<PyArray1<T>>() {
            return Ok(array.readonly());
        }
        let converted = obj
            .py()
            .import("numpy")?
            .call_method1("asarray", (obj, dtype_name))
            .map_err(|e| InvalidArgumentError::new_err(format!("{name} cannot be read as {dtype_name}: {e}")))?;
        match converted.cast_into::<PyArray1<T>>() {
            Ok(array) => Ok(array.readonly()),
            Err(e) => Err(InvalidArgumentError::new_err(format!(
                "{name} must be one-dimensional, got an array of shape {}",
                e.into_inner().getattr("shape")?
            ))),
        }
    }

    /// Integer arrays only: floats are rejected rather than silently truncated.
    fn as_int64_1d<'py>(obj: &Bound<'py, PyAny>, name: &str) -> PyResult<PyReadonlyArray1<'py, i64>> {
        if let Ok(array) = obj.cast::<PyArray1<i64>>() {
            return Ok(array.readonly());
        }
        let array = obj.py().import("numpy")?.call_method1("asarray", (obj,))?;
        let kind: String = array.getattr("dtype")?.getattr("kind")?.extract()?;
        let size: usize = array.getattr("size")?.extract()?;
        if size > 0 && kind != "i" && kind != "u" {
            return Err(InvalidArgumentError::new_err(format!("{name} must hold integers, got dtype kind {kind:?}")));
        }
        as_numpy_1d::<i64>(&array, name, "int64")
    }

    /// A contiguous view when the array allows it, else a copy.
    fn contiguous<'a, T: numpy::Element + Clone>(array: &'a PyReadonlyArray1<'_, T>) -> Cow<'a, [T]> {
        match array.as_slice() {
            Ok(slice) => Cow::Borrowed(slice),
            Err(_) => Cow::Owned(array.as_array().to_vec()),
        }
    }

    fn non_negative(name: &str, value: i64) -> PyResult<usize> {
        usize::try_from(value).map_err(|_| InvalidArgumentError::new_err(format!("{name} must be >= 0, got {value}")))
    }

    /// Group-relative advantages over contiguous groups `[p0 x G, p1 x G, ...]`, as float32.
    ///
    /// estimator: "grpo" = (r - mean) / (std + eps) with the unbiased std (ddof=1);
    /// "dr_grpo" = r - mean; "rloo" = r - mean of the other rewards in the group.
    /// NaN marks an excluded sample (judge abstained): its advantage is exactly 0 and it is left
    /// out of its group's statistics. All-equal groups and groups of one get exactly 0.
    /// Rewards of another dtype (float64, ints, lists) are converted to float32; +-inf raises
    /// InvalidArgumentError; group_size must divide len(rewards) (GroupSizeError).
    #[pyfunction(name = "group_advantages")]
    #[pyo3(signature = (rewards, group_size, estimator = "grpo", eps = 1e-6))]
    pub(super) fn py_group_advantages<'py>(
        py: Python<'py>,
        rewards: &Bound<'py, PyAny>,
        group_size: &Bound<'py, PyAny>,
        estimator: &str,
        eps: f64,
    ) -> PyResult<Float32Array<'py>> {
        // `True` is an int to Python; as a group size it is a mistake, not 1.
        if group_size.is_instance_of::<pyo3::types::PyBool>() {
            return Err(GroupSizeError::new_err(format!("group_size must be an integer, got {}", group_size.repr()?)));
        }
        let group_size: i64 = group_size
            .extract()
            .map_err(|_| GroupSizeError::new_err(format!("group_size must be an integer, got {}", group_size.repr().map(|r| r.to_string()).unwrap_or_default())))?;
        let estimator = Estimator::from_name(estimator)?;
        let group_size = usize::try_from(group_size)
            .map_err(|_| GroupSizeError::new_err(format!("group_size must be positive, got {group_size}")))?;
        let rewards = as_numpy_1d::<f32>(rewards, "rewards", "float32")?;
        let rewards = contiguous(&rewards);
        let advantages = py.detach(|| advantage::group_advantages(&rewards, group_size, estimator, eps as f32))?;
        Ok(PyArray1::from_vec(py, advantages))
    }

    /// GAE over ragged sequences flattened token-wise; returns float32 (advantages, returns).
    ///
    /// sum(lengths) == len(rewards) == len(values); every sequence is terminal after its last
    /// token (next value 0); returns = advantages + values. gamma and lam lie in [0, 1].
    #[pyfunction(name = "gae")]
    #[pyo3(signature = (rewards, values, lengths, gamma = 1.0, lam = 0.95))]
    pub(super) fn py_gae<'py>(
        py: Python<'py>,
        rewards: &Bound<'py, PyAny>,
        values: &Bound<'py, PyAny>,
        lengths: &Bound<'py, PyAny>,
        gamma: f64,
        lam: f64,
    ) -> PyResult<(Float32Array<'py>, Float32Array<'py>)> {
        let (rewards, values) = (as_numpy_1d::<f32>(rewards, "rewards", "float32")?, as_numpy_1d::<f32>(values, "values", "float32")?);
        let lengths = as_int64_1d(lengths, "lengths")?;
        let (rewards, values, lengths) = (contiguous(&rewards), contiguous(&values), contiguous(&lengths));
        let (advantages, returns) = py.detach(|| advantage::gae(&rewards, &values, &lengths, gamma as f32, lam as f32))?;
        Ok((PyArray1::from_vec(py, advantages), PyArray1::from_vec(py, returns)))
    }

    /// One sample's token ids: borrowed from a contiguous int64 array, or copied from anything else.
    enum TokenIds<'py> {
        Array(PyReadonlyArray1<'py, TokenId>),
        Copied(Vec<TokenId>),
    }

    impl<'py> TokenIds<'py> {
        fn extract(obj: &Bound<'py, PyAny>, what: impl FnOnce() -> String) -> PyResult<Self> {
            if let Ok(array) = obj.cast::<PyArray1<TokenId>>() {
                if array.is_contiguous() {
                    return Ok(TokenIds::Array(array.readonly()));
                }
            }
            if obj.cast::<numpy::PyUntypedArray>().is_ok() {
                return Ok(TokenIds::Array(as_int64_1d(obj, &what())?));
            }
            if let Some(ids) = obj.cast::<PyList>().ok().and_then(|list| read_int_list(list)) {
                return Ok(TokenIds::Copied(ids));
            }
            obj.extract::<Vec<TokenId>>().map(TokenIds::Copied).map_err(|e| {
                InvalidArgumentError::new_err(format!("{} must be a sequence of token ids (ints): {e}", what()))
            })
        }

        fn as_slice(&self) -> Cow<'_, [TokenId]> {
            match self {
                TokenIds::Array(array) => contiguous(array),
                TokenIds::Copied(ids) => Cow::Borrowed(ids),
            }
        }
    }

    /// A list of Python ints read through the C API. Tokenizers hand over lists of ints, and
    /// this is ~3x faster than pyo3's generic per-item extraction. None when an item is not an
    /// int or overflows int64: the caller then takes the general path, which reports the error.
    fn read_int_list(list: &Bound<'_, PyList>) -> Option<Vec<TokenId>> {
        let len = list.len();
        let mut ids = Vec::with_capacity(len);
        for index in 0..len {
            // SAFETY: the GIL is held (`list` is a Bound); PyList_GetItem bounds-checks and
            // returns a borrowed reference (or NULL); only int objects are read, and reading
            // an int runs no Python code, so the list cannot change during the loop.
            let value = unsafe {
                let item = pyo3::ffi::PyList_GetItem(list.as_ptr(), index as pyo3::ffi::Py_ssize_t);
                if item.is_null() || pyo3::ffi::PyLong_Check(item) == 0 {
                    pyo3::ffi::PyErr_Clear();
                    return None;
                }
                pyo3::ffi::PyLong_AsLongLong(item)
            };
            if value == -1 && PyErr::take(list.py()).is_some() {
                return None; // OverflowError: let the general path raise it
            }
            ids.push(value);
        }
        Some(ids)
    }

    /// One packed batch of judge prompts; every array is int64 except `cu_seqlens` (int32).
    ///
    /// Padded: input_ids/attention_mask are [rows, width]. Varlen: input_ids and position_ids
    /// are flat, cu_seqlens has rows + 1 offsets, attention_mask is None. len(batch) = rows.
    #[pyclass(frozen, name = "PackedBatch", module = "rlkd._core")]
    pub(super) struct PyPackedBatch {
        /// `[rows, width]` padded, or `[total_tokens]` flat in varlen mode.
        #[pyo3(get)]
        input_ids: Py<PyAny>,
        /// `[rows, width]` 0/1; None in varlen mode.
        #[pyo3(get)]
        attention_mask: Option<Py<PyAny>>,
        /// `[rows]` position of each row's last real token (into the flat array in varlen mode).
        #[pyo3(get)]
        last_index: Py<PyArray1<i64>>,
        /// `[rows]` input sample of each row.
        #[pyo3(get)]
        sample_index: Py<PyArray1<i64>>,
        /// `[rows]` real tokens of each row.
        #[pyo3(get)]
        lengths: Py<PyArray1<i64>>,
        /// `[rows + 1]` int32 row offsets in varlen mode, else None.
        #[pyo3(get)]
        cu_seqlens: Option<Py<PyArray1<i32>>>,
        /// `[total_tokens]` positions restarting at 0 per row in varlen mode, else None.
        #[pyo3(get)]
        position_ids: Option<Py<PyArray1<i64>>>,
        /// Rows whose truncated field was shortened.
        #[pyo3(get)]
        num_truncated: usize,
        /// Pad tokens in `input_ids` (0 in varlen mode).
        #[pyo3(get)]
        num_padding_tokens: usize,
        rows: usize,
    }

    #[pymethods]
    impl PyPackedBatch {
        fn __len__(&self) -> usize {
            self.rows
        }

        fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
            let shape = self.input_ids.bind(py).getattr("shape")?;
            Ok(format!(
                "PackedBatch(rows={}, input_ids.shape={shape}, varlen={}, num_truncated={}, num_padding_tokens={})",
                self.rows,
                if self.cu_seqlens.is_some() { "True" } else { "False" },
                self.num_truncated,
                self.num_padding_tokens
            ))
        }
    }

    impl PyPackedBatch {
        fn from_batch(py: Python<'_>, batch: pack::PackedBatch) -> PyResult<Self> {
            let rows = batch.rows();
            let (input_ids, attention_mask, cu_seqlens, position_ids) = match batch.layout {
                Layout::Padded { width, attention_mask } => {
                    let as_matrix = |v: Vec<i64>| -> PyResult<Py<PyAny>> {
                        let matrix = Array2::from_shape_vec((rows, width), v)
                            .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(e.to_string()))?;
                        Ok(matrix.into_pyarray(py).into_any().unbind())
                    };
                    (as_matrix(batch.input_ids)?, Some(as_matrix(attention_mask)?), None, None)
                }
                Layout::Varlen { cu_seqlens, position_ids } => (
                    PyArray1::from_vec(py, batch.input_ids).into_any().unbind(),
                    None,
                    Some(PyArray1::from_vec(py, cu_seqlens).unbind()),
                    Some(PyArray1::from_vec(py, position_ids).unbind()),
                ),
            };
            Ok(PyPackedBatch {
                input_ids,
                attention_mask,
                last_index: PyArray1::from_vec(py, batch.last_index).unbind(),
                sample_index: PyArray1::from_vec(py, batch.sample_index).unbind(),
                lengths: PyArray1::from_vec(py, batch.lengths).unbind(),
                cu_seqlens,
                position_ids,
                num_truncated: batch.num_truncated,
                num_padding_tokens: batch.num_padding_tokens,
                rows,
            })
        }
    }

    /// Packs judge prompts `pieces[0] + fields[0][i] + pieces[1] + ... + pieces[k]` into batches.
    ///
    /// Overlong samples (> max_len) are cut in fields[truncate_field]: "keep_end" (default)
    /// drops its first tokens, "keep_start" its last ones, "error" raises PackingError. Rows are
    /// sorted longest first (unless sort_by_length=False) and filled greedily while
    /// rows x width <= max_tokens_per_batch (varlen: total tokens <= budget). Left padding
    /// (default) puts every row's last token at width - 1. `sample_index` maps rows back to
    /// input order. Token ids may be lists of ints or integer numpy arrays.
    #[pyfunction(name = "pack_judge_prompts")]
    #[pyo3(signature = (
        template_pieces, fields, *, max_tokens_per_batch, max_len, pad_id,
        padding_side = "left", truncate_field = -1, truncation = "keep_end", varlen = false,
        sort_by_length = true
    ))]
    // Spelled out because pyo3 renders the default `-1` as `...` in the generated signature.
    #[pyo3(
        text_signature = "(template_pieces, fields, *, max_tokens_per_batch, max_len, pad_id, padding_side='left', truncate_field=-1, truncation='keep_end', varlen=False, sort_by_length=True)"
    )]
    #[allow(clippy::too_many_arguments)] // mirrors the documented keyword-only Python signature
    pub(super) fn py_pack_judge_prompts(
        py: Python<'_>,
        template_pieces: &Bound<'_, PyAny>,
        fields: &Bound<'_, PyAny>,
        max_tokens_per_batch: i64,
        max_len: i64,
        pad_id: i64,
        padding_side: &str,
        truncate_field: i64,
        truncation: &str,
        varlen: bool,
        sort_by_length: bool,
    ) -> PyResult<Vec<PyPackedBatch>> {
        let options = PackOptions {
            max_tokens_per_batch: non_negative("max_tokens_per_batch", max_tokens_per_batch)?,
            max_len: non_negative("max_len", max_len)?,
            pad_id,
            padding_side: PaddingSide::from_name(padding_side)?,
            truncate_field,
            truncation: Truncation::from_name(truncation)?,
            varlen,
            sort_by_length,
        };
        // Read everything with the GIL held...
        let pieces = template_pieces
            .try_iter()?
            .enumerate()
            .map(|(p, piece)| TokenIds::extract(&piece?, || format!("template_pieces[{p}]")))
            .collect::<PyResult<Vec<_>>>()?;
        let fields = fields
            .try_iter()?
            .enumerate()
            .map(|(f, field)| {
                field?
                    .try_iter()?
                    .enumerate()
                    .map(|(i, ids)| TokenIds::extract(&ids?, || format!("fields[{f}][{i}]")))
                    .collect::<PyResult<Vec<_>>>()
            })
            .collect::<PyResult<Vec<_>>>()?;
        let piece_slices: Vec<Cow<'_, [TokenId]>> = pieces.iter().map(TokenIds::as_slice).collect();
        let field_slices: Vec<Vec<Cow<'_, [TokenId]>>> =
            fields.iter().map(|field| field.iter().map(TokenIds::as_slice).collect()).collect();
        // ...then pack without it.
        let batches = py.detach(|| pack::pack_judge_prompts(&piece_slices, &field_slices, &options))?;
        batches.into_iter().map(|batch| PyPackedBatch::from_batch(py, batch)).collect()
    }
}
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
    m.add_function(wrap_pyfunction!(hedges, m)?)?;
    m.add_function(wrap_pyfunction!(normalize_answer, m)?)?;
    m.add_function(wrap_pyfunction!(verify, m)?)?;
    m.add_function(wrap_pyfunction!(verify_batch, m)?)?;
    // END register text kernels
    // BEGIN register numeric kernels
    m.add_function(wrap_pyfunction!(numeric::py_group_advantages, m)?)?;
    m.add_function(wrap_pyfunction!(numeric::py_gae, m)?)?;
    m.add_function(wrap_pyfunction!(numeric::py_pack_judge_prompts, m)?)?;
    m.add_class::<numeric::PyPackedBatch>()?;
    // END register numeric kernels
    Ok(())
}
