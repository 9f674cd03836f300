//! Judge-prompt packing: token ids in, padded (or varlen) batches under a token budget out.
//!
//! # Sequences
//! Sample `i` is rendered as
//! `pieces[0] + fields[0][i] + pieces[1] + fields[1][i] + ... + fields[k-1][i] + pieces[k]`,
//! so `pieces` has one more entry than `fields` and every field has one entry per sample. The
//! issue's judge has pieces (prefix, between question and response, suffix) and fields
//! (questions, responses); a reference-guided judge adds a reference field.
//!
//! # Truncation policy
//! A sequence longer than `max_len` is shortened inside ONE field, `truncate_field` (negative
//! counts from the end; default -1 = the last field, the response). Template pieces and the
//! other fields are never cut.
//! - `KeepEnd` (default): drop tokens from the START of that field, keeping its end, where a
//!   response states its final answer.
//! - `KeepStart`: drop tokens from the end of that field.
//! - `Error`: any overlong sequence is an `Error::Packing`.
//!
//! A sequence that is still too long with that field emptied, or that is empty, is an
//! `Error::Packing` naming the sample and the lengths.
//!
//! # Batches
//! Rows are sorted by length, **longest first** (stable: equal lengths keep input order), so
//! that the first batch is the widest one (an out-of-memory shows up on step one, not at the
//! end) and each batch holds rows of near-equal length (little padding). `sort_by_length =
//! false` keeps arrival order. Batches are filled greedily in that order: a row joins the
//! current batch while `rows × padded width ≤ max_tokens_per_batch` (varlen: while the batch's
//! total tokens ≤ budget), otherwise it opens the next batch. `max_len > max_tokens_per_batch`
//! is an error because a single row might not fit.
//!
//! # Layouts
//! - Padded: `input_ids`/`attention_mask` are `rows × width` (row-major), `width` = longest row
//!   of the batch. Left padding (default) right-aligns every row, so every `last_index` is
//!   `width - 1` — the position whose next-token distribution the judge reads.
//! - Varlen: rows are concatenated without padding; `cu_seqlens` (int32, as flash-attn wants)
//!   has `rows + 1` offsets, `position_ids` restart at 0 for each row, and `last_index` indexes
//!   the flat array.
//!
//! `sample_index[r]` maps row `r` back to its input sample.

use std::cmp::Reverse;
use std::ops::Range;

use rayon::prelude::*;

use crate::{Error, Result};

/// Token ids are int64 end to end (what torch embedding lookups take).
pub type TokenId = i64;

/// Where the pad tokens go in the padded layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    Left,
    Right,
}

impl PaddingSide {
    pub const NAMES: [&'static str; 2] = ["left", "right"];

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "left" => Ok(PaddingSide::Left),
            "right" => Ok(PaddingSide::Right),
            other => Err(Error::InvalidArgument(format!(
                "unknown padding_side {other:?}; valid values: {}",
                PaddingSide::NAMES.join(", ")
            ))),
        }
    }
}

/// What to do with a sequence longer than `max_len` (see module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    KeepEnd,
    KeepStart,
    Error,
}

impl Truncation {
    pub const NAMES: [&'static str; 3] = ["keep_end", "keep_start", "error"];

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "keep_end" => Ok(Truncation::KeepEnd),
            "keep_start" => Ok(Truncation::KeepStart),
            "error" => Ok(Truncation::Error),
            other => Err(Error::InvalidArgument(format!(
                "unknown truncation {other:?}; valid values: {}",
                Truncation::NAMES.join(", ")
            ))),
        }
    }
}

/// Packing limits and layout choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackOptions {
    pub max_tokens_per_batch: usize,
    pub max_len: usize,
    pub pad_id: TokenId,
    pub padding_side: PaddingSide,
    /// Field to cut in overlong sequences; negative counts from the end (-1 = last field).
    pub truncate_field: i64,
    pub truncation: Truncation,
    pub varlen: bool,
    pub sort_by_length: bool,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            max_tokens_per_batch: 16_384,
            max_len: 4_096,
            pad_id: 0,
            padding_side: PaddingSide::Left,
            truncate_field: -1,
            truncation: Truncation::KeepEnd,
            varlen: false,
            sort_by_length: true,
        }
    }
}

/// The part of a batch that differs between the padded and the varlen layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `input_ids` is `rows × width`; `attention_mask` likewise, 1 on real tokens.
    Padded {
        width: usize,
        attention_mask: Vec<i64>,
    },
    /// `input_ids` is flat; row `r` is `input_ids[cu_seqlens[r]..cu_seqlens[r + 1]]`.
    Varlen {
        cu_seqlens: Vec<i32>,
        position_ids: Vec<i64>,
    },
}

/// One batch of packed judge prompts (see module docs for the layouts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackedBatch {
    pub input_ids: Vec<TokenId>,
    pub layout: Layout,
    /// Position of each row's last real token (into the row, or into the flat array).
    pub last_index: Vec<i64>,
    /// Input sample of each row.
    pub sample_index: Vec<i64>,
    /// Real (non-pad) tokens of each row, after truncation.
    pub lengths: Vec<i64>,
    /// Rows whose truncated field was shortened.
    pub num_truncated: usize,
    /// Pad tokens in `input_ids` (always 0 in varlen mode).
    pub num_padding_tokens: usize,
}

impl PackedBatch {
    pub fn rows(&self) -> usize {
        self.sample_index.len()
    }
}

/// How one sample will be laid out: its final length and the kept part of the cut field.
#[derive(Debug, Clone)]
struct SamplePlan {
    length: usize,
    kept: Range<usize>,
    truncated: bool,
}

/// Packs judge prompts; see the module docs for every convention.
///
/// `fields[f][i]` is field `f` of sample `i`.
pub fn pack_judge_prompts<P, F>(
    pieces: &[P],
    fields: &[Vec<F>],
    options: &PackOptions,
) -> Result<Vec<PackedBatch>>
where
    P: AsRef<[TokenId]> + Sync,
    F: AsRef<[TokenId]> + Sync,
{
    let truncate_field = validate(pieces, fields, options)?;
    let num_samples = fields.first().map_or(0, Vec::len);
    let plans = (0..num_samples)
        .map(|i| plan_sample(pieces, fields, i, truncate_field, options))
        .collect::<Result<Vec<_>>>()?;

    let mut order: Vec<usize> = (0..num_samples).collect();
    if options.sort_by_length {
        order.sort_by_key(|&i| Reverse(plans[i].length)); // stable: ties keep input order
    }
    let batches = split_into_batches(&order, &plans, options);

    let total_tokens: usize = plans.iter().map(|p| p.length).sum();
    let build =
        |rows: &&[usize]| build_batch(rows, &plans, pieces, fields, truncate_field, options);
    // Below ~64k tokens the copy takes microseconds and threads would only add overhead.
    if total_tokens >= 1 << 16 {
        batches.par_iter().map(build).collect()
    } else {
        batches.iter().map(build).collect()
    }
}

/// Checks shapes and options; returns the resolved (non-negative) truncate field.
fn validate<P: AsRef<[TokenId]>, F>(
    pieces: &[P],
    fields: &[Vec<F>],
    options: &PackOptions,
) -> Result<usize> {
    if fields.is_empty() {
        return Err(Error::InvalidArgument(
            "fields is empty; give at least one field".into(),
        ));
    }
    if pieces.len() != fields.len() + 1 {
        return Err(Error::LengthMismatch(format!(
            "template_pieces has {} pieces but there are {} fields; pieces must be one more than fields",
            pieces.len(),
            fields.len()
        )));
    }
    let num_samples = fields[0].len();
    if let Some((f, field)) = fields
        .iter()
        .enumerate()
        .find(|(_, field)| field.len() != num_samples)
    {
        return Err(Error::LengthMismatch(format!(
            "fields[{f}] has {} samples but fields[0] has {num_samples}",
            field.len()
        )));
    }
    if options.max_len == 0 {
        return Err(Error::InvalidArgument("max_len must be >= 1".into()));
    }
    if options.max_len > options.max_tokens_per_batch {
        return Err(Error::Packing(format!(
            "max_len {} exceeds max_tokens_per_batch {}: a single row might not fit in a batch",
            options.max_len, options.max_tokens_per_batch
        )));
    }
    let num_fields = fields.len() as i64;
    let tf = options.truncate_field;
    if !(-num_fields..num_fields).contains(&tf) {
        return Err(Error::InvalidArgument(format!(
            "truncate_field {tf} is out of range for {num_fields} fields"
        )));
    }
    Ok(if tf < 0 {
        (tf + num_fields) as usize
    } else {
        tf as usize
    })
}

/// Length and truncation of sample `i`, or the error explaining why it cannot be packed.
fn plan_sample<P: AsRef<[TokenId]>, F: AsRef<[TokenId]>>(
    pieces: &[P],
    fields: &[Vec<F>],
    i: usize,
    truncate_field: usize,
    options: &PackOptions,
) -> Result<SamplePlan> {
    let cut_len = fields[truncate_field][i].as_ref().len();
    let full_len = pieces.iter().map(|p| p.as_ref().len()).sum::<usize>()
        + fields
            .iter()
            .map(|field| field[i].as_ref().len())
            .sum::<usize>();
    if full_len == 0 {
        return Err(Error::Packing(format!(
            "sample {i} is empty (no template or field tokens)"
        )));
    }
    if full_len <= options.max_len {
        return Ok(SamplePlan {
            length: full_len,
            kept: 0..cut_len,
            truncated: false,
        });
    }
    let excess = full_len - options.max_len;
    if options.truncation == Truncation::Error {
        return Err(Error::Packing(format!(
            "sample {i} has {full_len} tokens > max_len {} and truncation is \"error\"",
            options.max_len
        )));
    }
    if excess > cut_len {
        return Err(Error::Packing(format!(
            "sample {i} has {full_len} tokens > max_len {}; even with field {truncate_field} \
             ({cut_len} tokens) emptied it has {} tokens",
            options.max_len,
            full_len - cut_len
        )));
    }
    let kept = match options.truncation {
        Truncation::KeepStart => 0..cut_len - excess,
        _ => excess..cut_len,
    };
    Ok(SamplePlan {
        length: options.max_len,
        kept,
        truncated: true,
    })
}

/// Greedy split of `order` into batches under the token budget (see module docs).
fn split_into_batches<'a>(
    order: &'a [usize],
    plans: &[SamplePlan],
    options: &PackOptions,
) -> Vec<&'a [usize]> {
    let budget = options.max_tokens_per_batch;
    let mut batches = Vec::new();
    let (mut start, mut width, mut tokens) = (0_usize, 0_usize, 0_usize);
    for (position, &sample) in order.iter().enumerate() {
        let length = plans[sample].length;
        let rows = position - start;
        let fits = if options.varlen {
            tokens + length <= budget
        } else {
            (rows + 1).saturating_mul(width.max(length)) <= budget
        };
        if !fits && rows > 0 {
            batches.push(&order[start..position]);
            (start, width, tokens) = (position, 0, 0);
        }
        width = width.max(length);
        tokens += length;
    }
    if start < order.len() {
        batches.push(&order[start..]);
    }
    batches
}

/// Materialises one batch's arrays.
fn build_batch<P: AsRef<[TokenId]>, F: AsRef<[TokenId]>>(
    rows: &[usize],
    plans: &[SamplePlan],
    pieces: &[P],
    fields: &[Vec<F>],
    truncate_field: usize,
    options: &PackOptions,
) -> Result<PackedBatch> {
    let lengths: Vec<usize> = rows.iter().map(|&i| plans[i].length).collect();
    let real_tokens: usize = lengths.iter().sum();
    let append = |dst: &mut Vec<TokenId>, sample: usize| {
        append_sequence(
            dst,
            pieces,
            fields,
            sample,
            truncate_field,
            &plans[sample].kept,
        )
    };
    let mut last_index = Vec::with_capacity(rows.len());
    // Every array is written in one sequential pass (no pre-fill then overwrite).
    let (input_ids, layout, num_padding_tokens) = if options.varlen {
        let mut input_ids = Vec::with_capacity(real_tokens);
        let mut position_ids = Vec::with_capacity(real_tokens);
        let mut cu_seqlens = Vec::with_capacity(rows.len() + 1);
        cu_seqlens.push(0_i32);
        for (&sample, &length) in rows.iter().zip(&lengths) {
            append(&mut input_ids, sample);
            position_ids.extend(0..length as i64);
            last_index.push(input_ids.len() as i64 - 1);
            cu_seqlens.push(i32::try_from(input_ids.len()).map_err(|_| {
                Error::Packing(format!(
                    "a varlen batch of {} tokens overflows int32 cu_seqlens",
                    input_ids.len()
                ))
            })?);
        }
        (
            input_ids,
            Layout::Varlen {
                cu_seqlens,
                position_ids,
            },
            0,
        )
    } else {
        let width = lengths.iter().copied().max().unwrap_or(0);
        let mut input_ids = Vec::with_capacity(rows.len() * width);
        let mut attention_mask = Vec::with_capacity(rows.len() * width);
        for (&sample, &length) in rows.iter().zip(&lengths) {
            let padding = width - length;
            let pad = |ids: &mut Vec<TokenId>, mask: &mut Vec<i64>| {
                ids.resize(ids.len() + padding, options.pad_id);
                mask.resize(mask.len() + padding, 0);
            };
            if options.padding_side == PaddingSide::Left {
                pad(&mut input_ids, &mut attention_mask);
            }
            append(&mut input_ids, sample);
            attention_mask.resize(attention_mask.len() + length, 1);
            // Rows are never empty (plan_sample rejects those), so neither index underflows.
            last_index.push(match options.padding_side {
                PaddingSide::Left => width as i64 - 1,
                PaddingSide::Right => length as i64 - 1,
            });
            if options.padding_side == PaddingSide::Right {
                pad(&mut input_ids, &mut attention_mask);
            }
        }
        let padding = rows.len() * width - real_tokens;
        (
            input_ids,
            Layout::Padded {
                width,
                attention_mask,
            },
            padding,
        )
    };
    Ok(PackedBatch {
        input_ids,
        layout,
        last_index,
        sample_index: rows.iter().map(|&i| i as i64).collect(),
        lengths: lengths.iter().map(|&l| l as i64).collect(),
        num_truncated: rows.iter().filter(|&&i| plans[i].truncated).count(),
        num_padding_tokens,
    })
}

/// Appends sample `sample`'s rendered (and truncated) sequence to `dst`.
fn append_sequence<P: AsRef<[TokenId]>, F: AsRef<[TokenId]>>(
    dst: &mut Vec<TokenId>,
    pieces: &[P],
    fields: &[Vec<F>],
    sample: usize,
    truncate_field: usize,
    kept: &Range<usize>,
) {
    for (f, field) in fields.iter().enumerate() {
        dst.extend_from_slice(pieces[f].as_ref());
        let tokens = field[sample].as_ref();
        dst.extend_from_slice(if f == truncate_field {
            &tokens[kept.clone()]
        } else {
            tokens
        });
    }
    if let Some(last) = pieces.last() {
        dst.extend_from_slice(last.as_ref());
    }
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::needless_range_loop
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One generated packing input.
    #[derive(Debug, Clone)]
    struct Case {
        pieces: Vec<Vec<TokenId>>,
        fields: Vec<Vec<Vec<TokenId>>>,
        options: PackOptions,
    }

    /// The rendered sequence written the obvious way, or None if it must be rejected.
    fn reference_sequence(case: &Case, i: usize) -> Option<(Vec<TokenId>, bool)> {
        let k = case.fields.len() as i64;
        let tf = ((case.options.truncate_field + k) % k) as usize;
        let render = |cut: &[TokenId]| {
            let mut seq = Vec::new();
            for f in 0..case.fields.len() {
                seq.extend(&case.pieces[f]);
                seq.extend(if f == tf { cut } else { &case.fields[f][i][..] });
            }
            seq.extend(case.pieces.last().unwrap());
            seq
        };
        let field = &case.fields[tf][i];
        let full = render(field);
        if full.is_empty() {
            return None;
        }
        if full.len() <= case.options.max_len {
            return Some((full, false));
        }
        let excess = full.len() - case.options.max_len;
        if excess > field.len() {
            return None;
        }
        let cut = match case.options.truncation {
            Truncation::Error => return None,
            Truncation::KeepEnd => field[excess..].to_vec(), // the end of the field survives
            Truncation::KeepStart => field[..field.len() - excess].to_vec(),
        };
        Some((render(&cut), true))
    }

    fn options_are_valid(case: &Case) -> bool {
        let k = case.fields.len() as i64;
        let o = &case.options;
        k > 0
            && case.pieces.len() as i64 == k + 1
            && case.fields.iter().all(|f| f.len() == case.fields[0].len())
            && o.max_len >= 1
            && o.max_len <= o.max_tokens_per_batch
            && (-k..k).contains(&o.truncate_field)
    }

    /// Runs the packer on `case` and checks every invariant against the reference.
    fn check_case(case: &Case) -> std::result::Result<(), String> {
        let result = pack_judge_prompts(&case.pieces, &case.fields, &case.options);
        let expected: Option<Vec<_>> = if options_are_valid(case) {
            (0..case.fields[0].len())
                .map(|i| reference_sequence(case, i))
                .collect()
        } else {
            None
        };
        let (batches, expected) = match (result, expected) {
            (Err(_), None) => return Ok(()),
            (Ok(b), Some(e)) => (b, e),
            (r, e) => {
                return Err(format!(
                    "outcome mismatch: got {r:?}, reference accepts: {}",
                    e.is_some()
                ))
            }
        };
        let o = &case.options;
        let mut seen = vec![false; expected.len()];
        let mut row_lengths_in_order = Vec::new();
        let mut arrival = Vec::new();
        for (b, batch) in batches.iter().enumerate() {
            let rows = batch.rows();
            if rows == 0 {
                return Err("empty batch".into());
            }
            let (mut truncated, mut real) = (0, 0);
            for r in 0..rows {
                let sample = batch.sample_index[r] as usize;
                if std::mem::replace(&mut seen[sample], true) {
                    return Err(format!("sample {sample} packed twice"));
                }
                let (want, was_truncated) = &expected[sample];
                truncated += usize::from(*was_truncated);
                real += want.len();
                if batch.lengths[r] as usize != want.len() {
                    return Err(format!(
                        "row {r}: length {} != {}",
                        batch.lengths[r],
                        want.len()
                    ));
                }
                let got: Vec<TokenId> = match &batch.layout {
                    Layout::Padded {
                        width,
                        attention_mask,
                    } => {
                        let ids = &batch.input_ids[r * width..(r + 1) * width];
                        let mask = &attention_mask[r * width..(r + 1) * width];
                        let real_range = match o.padding_side {
                            PaddingSide::Left => width - want.len()..*width,
                            PaddingSide::Right => 0..want.len(),
                        };
                        for j in 0..*width {
                            let is_real = real_range.contains(&j);
                            if mask[j] != i64::from(is_real) || (!is_real && ids[j] != o.pad_id) {
                                return Err(format!("row {r} position {j}: bad mask/pad"));
                            }
                        }
                        if batch.last_index[r] != real_range.end as i64 - 1 {
                            return Err(format!("row {r}: last_index {}", batch.last_index[r]));
                        }
                        ids[real_range].to_vec()
                    }
                    Layout::Varlen {
                        cu_seqlens,
                        position_ids,
                    } => {
                        let (s, e) = (cu_seqlens[r] as usize, cu_seqlens[r + 1] as usize);
                        if position_ids[s..e]
                            .iter()
                            .enumerate()
                            .any(|(j, &p)| p != j as i64)
                        {
                            return Err(format!("row {r}: position_ids do not restart at 0"));
                        }
                        if batch.last_index[r] != e as i64 - 1 {
                            return Err(format!("row {r}: last_index {}", batch.last_index[r]));
                        }
                        batch.input_ids[s..e].to_vec()
                    }
                };
                if &got != want {
                    return Err(format!("row {r} of batch {b}: {got:?} != {want:?}"));
                }
                row_lengths_in_order.push(want.len());
                arrival.push(sample);
            }
            let used = match &batch.layout {
                Layout::Padded { width, .. } => {
                    if *width != batch.lengths.iter().copied().max().unwrap() as usize {
                        return Err("width is not the longest row".into());
                    }
                    rows * width
                }
                Layout::Varlen { cu_seqlens, .. } => {
                    if cu_seqlens.len() != rows + 1
                        || cu_seqlens[0] != 0
                        || *cu_seqlens.last().unwrap() as usize != real
                    {
                        return Err("bad cu_seqlens".into());
                    }
                    real
                }
            };
            if used > o.max_tokens_per_batch {
                return Err(format!(
                    "batch {b} uses {used} > budget {}",
                    o.max_tokens_per_batch
                ));
            }
            if batch.num_truncated != truncated || batch.num_padding_tokens != used - real {
                return Err("bad counters".into());
            }
            // Greedy: the next batch's first row would not have fit into this one.
            if let Some(next) = batches.get(b + 1) {
                let next_len = next.lengths[0] as usize;
                let would_use = if o.varlen {
                    real + next_len
                } else {
                    (rows + 1) * (used / rows).max(next_len)
                };
                if would_use <= o.max_tokens_per_batch {
                    return Err(format!("batch {b} closed early"));
                }
            }
        }
        if seen.iter().any(|s| !s) {
            return Err("a sample is missing".into());
        }
        if o.sort_by_length {
            if row_lengths_in_order.windows(2).any(|w| w[0] < w[1]) {
                return Err("rows are not sorted longest first".into());
            }
        } else if arrival.windows(2).any(|w| w[0] > w[1]) {
            return Err("arrival order not kept".into());
        }
        Ok(())
    }

    /// splitmix64: a tiny deterministic generator for the million-input loop.
    struct SplitMix(u64);
    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn tokens(&mut self, max_len: u64) -> Vec<TokenId> {
            let len = self.below(max_len + 1);
            (0..len).map(|_| self.below(1000) as TokenId).collect()
        }
    }

    fn random_case(rng: &mut SplitMix) -> Case {
        let num_fields = 1 + rng.below(3) as usize;
        let num_samples = rng.below(9) as usize;
        // Mostly well-formed shapes, sometimes deliberately broken ones.
        let num_pieces = if rng.below(50) == 0 {
            num_fields + rng.below(3) as usize
        } else {
            num_fields + 1
        };
        let pieces = (0..num_pieces).map(|_| rng.tokens(6)).collect();
        let fields = (0..num_fields)
            .map(|_| {
                let n = if rng.below(50) == 0 {
                    rng.below(9) as usize
                } else {
                    num_samples
                };
                (0..n).map(|_| rng.tokens(24)).collect()
            })
            .collect();
        let max_len = rng.below(100) as usize;
        let options = PackOptions {
            max_tokens_per_batch: max_len + rng.below(200) as usize
                - (rng.below(20) == 0) as usize * max_len.min(1),
            max_len,
            pad_id: rng.below(5) as i64 - 2,
            padding_side: if rng.below(2) == 0 {
                PaddingSide::Left
            } else {
                PaddingSide::Right
            },
            truncate_field: if rng.below(10) == 0 {
                rng.below(8) as i64 - 4
            } else {
                -1 - rng.below(num_fields as u64) as i64
            },
            truncation: [
                Truncation::KeepEnd,
                Truncation::KeepEnd,
                Truncation::KeepStart,
                Truncation::Error,
            ][rng.below(4) as usize],
            varlen: rng.below(2) == 0,
            sort_by_length: rng.below(4) != 0,
        };
        Case {
            pieces,
            fields,
            options,
        }
    }

    /// ≥ 1,000,000 generated inputs: no panic and every invariant holds. (Per-call speed is a
    /// benchmark, `cargo bench --bench pack`, not a test: timings on a shared machine are noise.)
    #[test]
    fn million_random_inputs_hold_invariants() {
        const INPUTS: usize = 1_000_000;
        let mut rng = SplitMix(0x5EED);
        let mut accepted = 0;
        for n in 0..INPUTS {
            let case = random_case(&mut rng);
            accepted += usize::from(pack_judge_prompts(&case.pieces, &case.fields, &case.options).is_ok());
            if let Err(why) = check_case(&case) {
                panic!("input {n}: {why}\n{case:?}");
            }
        }
        assert!(
            accepted > INPUTS / 4,
            "the generator should mostly produce packable inputs"
        );
    }

    fn case_strategy() -> impl Strategy<Value = Case> {
        let ids = || prop::collection::vec(0_i64..50, 0..12);
        (1_usize..4, 0_usize..7)
            .prop_flat_map(move |(k, n)| {
                (
                    prop::collection::vec(ids(), k + 1),
                    prop::collection::vec(prop::collection::vec(ids(), n), k),
                    1_usize..40,
                    0_usize..100,
                    -3_i64..3,
                    prop::sample::select(vec![
                        Truncation::KeepEnd,
                        Truncation::KeepStart,
                        Truncation::Error,
                    ]),
                    any::<(bool, bool, bool)>(),
                )
            })
            .prop_map(
                |(
                    pieces,
                    fields,
                    max_len,
                    extra,
                    truncate_field,
                    truncation,
                    (left, varlen, sort),
                )| Case {
                    pieces,
                    fields,
                    options: PackOptions {
                        max_tokens_per_batch: max_len + extra,
                        max_len,
                        pad_id: -1,
                        padding_side: if left {
                            PaddingSide::Left
                        } else {
                            PaddingSide::Right
                        },
                        truncate_field,
                        truncation,
                        varlen,
                        sort_by_length: sort,
                    },
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]
        #[test]
        fn packing_invariants(case in case_strategy()) {
            prop_assert_eq!(check_case(&case), Ok(()));
        }
    }

    fn two_field_case(
        questions: Vec<Vec<TokenId>>,
        responses: Vec<Vec<TokenId>>,
        options: PackOptions,
    ) -> Case {
        Case {
            pieces: vec![vec![100, 101], vec![102], vec![103, 104]],
            fields: vec![questions, responses],
            options,
        }
    }

    #[test]
    fn keep_end_truncates_the_start_of_the_response() {
        let options = PackOptions {
            max_len: 9,
            max_tokens_per_batch: 64,
            ..PackOptions::default()
        };
        let case = two_field_case(vec![vec![1, 2]], vec![vec![10, 11, 12, 13, 14]], options);
        let batches = pack_judge_prompts(&case.pieces, &case.fields, &case.options).unwrap();
        // 5 template + 2 question + 5 response = 12 > 9: the response keeps its last 2 tokens.
        assert_eq!(
            batches[0].input_ids,
            vec![100, 101, 1, 2, 102, 13, 14, 103, 104]
        );
        assert_eq!(batches[0].num_truncated, 1);
        let keep_start = PackOptions {
            truncation: Truncation::KeepStart,
            ..options
        };
        let batches = pack_judge_prompts(&case.pieces, &case.fields, &keep_start).unwrap();
        assert_eq!(
            batches[0].input_ids,
            vec![100, 101, 1, 2, 102, 10, 11, 103, 104]
        );
    }

    #[test]
    fn left_padding_puts_every_last_token_at_the_end() {
        let options = PackOptions {
            max_len: 20,
            max_tokens_per_batch: 100,
            pad_id: -7,
            ..PackOptions::default()
        };
        let case = two_field_case(vec![vec![1], vec![1, 2, 3]], vec![vec![9], vec![]], options);
        let batches = pack_judge_prompts(&case.pieces, &case.fields, &case.options).unwrap();
        assert_eq!(batches.len(), 1);
        let b = &batches[0];
        assert_eq!(b.sample_index, vec![1, 0]); // longest first
        assert_eq!(b.last_index, vec![7, 7]);
        assert_eq!(&b.input_ids[8..], &[-7, 100, 101, 1, 102, 9, 103, 104]);
        assert_eq!(b.num_padding_tokens, 1);
    }

    #[test]
    fn errors_name_sample_and_lengths() {
        let options = PackOptions {
            max_len: 6,
            max_tokens_per_batch: 64,
            ..PackOptions::default()
        };
        let case = two_field_case(
            vec![vec![1], vec![1, 2, 3]],
            vec![vec![9], vec![8]],
            options,
        );
        let err = pack_judge_prompts(&case.pieces, &case.fields, &case.options).unwrap_err();
        assert!(
            matches!(&err, Error::Packing(m) if m.contains("sample 1") && m.contains("9 tokens")),
            "{err}"
        );
        let tight = PackOptions {
            max_len: 65,
            ..options
        };
        assert!(matches!(
            pack_judge_prompts(&case.pieces, &case.fields, &tight),
            Err(Error::Packing(_))
        ));
        let bad = two_field_case(vec![vec![1]], vec![], options);
        assert!(matches!(
            pack_judge_prompts(&bad.pieces, &bad.fields, &bad.options),
            Err(Error::LengthMismatch(_))
        ));
        assert!(
            matches!(PaddingSide::from_name("top"), Err(Error::InvalidArgument(m)) if m.contains("left, right"))
        );
    }

    #[test]
    fn large_inputs_take_the_parallel_path_and_agree() {
        let mut rng = SplitMix(7);
        let questions: Vec<Vec<TokenId>> = (0..300).map(|_| rng.tokens(100)).collect();
        let responses: Vec<Vec<TokenId>> = (0..300).map(|_| rng.tokens(600)).collect();
        for varlen in [false, true] {
            let options = PackOptions {
                max_len: 512,
                max_tokens_per_batch: 4096,
                varlen,
                ..PackOptions::default()
            };
            let case = two_field_case(questions.clone(), responses.clone(), options);
            assert_eq!(check_case(&case), Ok(()));
        }
    }
}
