//! Answer normalisation and equivalence (kernel 2): `verify(gold, output) -> Verdict`.
//!
//! # Pipeline: text → tokens → canonical [`Value`] → compare
//! 1. **Answers.** The output is a whole response: its final answer comes from
//!    [`crate::extract`] (non-strict); nothing found is [`Verdict::NoAnswer`]. The gold is a bare
//!    answer, or a worked solution when it holds `\boxed`/`\fbox`/`####` (then it is extracted
//!    strictly first). An empty gold gives `Unknown` (nothing to compare against).
//! 2. **Lexing** drops presentation: `$`, `\(..\)`, `\[..\]`, `\left`/`\right`, spacing commands
//!    (`\,` `\!` `\;` `\quad` ...), `\displaystyle`, degree marks (`^\circ`, `^{\circ}`, `°`),
//!    `\$`; `\dfrac`/`\tfrac`/`\cfrac` become `\frac`; `\text{}`/`\mbox{}`/`\mathrm{}`/... are
//!    unwrapped (their words are marked as text). Digit groups `1,234`, `1{,}234`, `1\,234`,
//!    `1 234` (thin or plain space) join when every group after the first has exactly 3 digits
//!    and the first has at most 3. `%`, `\%` and the word "percent" mark a percentage.
//! 3. **Parsing** into a canonical value, outermost structure first: `and`/`or` lists and
//!    `\pm x` (sets), `lhs = rhs` with a variable on the left (assignment), `\cup` (union of
//!    intervals), `\{..\}` (set), `(..)`/`[..]` with commas (tuple; interval when the brackets
//!    are mixed, square, or a bound is infinite), `\begin{pmatrix|bmatrix}` (matrix), a bare
//!    comma list (set, as math-verify reads it), then a scalar. Scalars are evaluated in exact
//!    rational arithmetic (i128 numerator/denominator, overflow → Unknown): integers, decimals,
//!    scientific notation (`1.5e3`, `1.5\times10^{3}`), `+ - * / \cdot \times \div`, `\frac`
//!    (also `\frac12`), mixed numbers (`3\frac{1}{2}` = 7/2), small integer powers, perfect
//!    square roots, `n!`, and `\infty`. Trailing unit words (`\text{..}` words, common short
//!    units such as `cm`, or plain words of four or more letters) and a leading `\$` are dropped. Anything with a variable or a
//!    function is *symbolic*; a run of plain words is *text* (case- and space-insensitive).
//! 4. **Comparing** follows math-verify 0.9 (the reference this crate is tested against):
//!    - numbers: if either side was written with a decimal point (a "float"), both values
//!      (percent applied) are rounded to 6 decimal places and compared — math-verify's
//!      `float_rounding=6` — and an exact rounding tie is `Unknown`; else if both are integers,
//!      the values *without* the percent are compared (math-verify: `9% == 9`); else the exact
//!      rationals with the percent applied (`50% == 1/2`);
//!    - tuples and matrices elementwise, sets and unions order-free, intervals with their
//!      open/closed ends, `x = 2` against `2` by its right side;
//!    - symbolic values are `Equal` only when their canonical text is identical; otherwise
//!      deciding would need a CAS, so the verdict is `Unknown`.
//!    - `NotEqual` only when sure: both sides parsed completely into a supported form. A
//!      percent on one side only, comma digit groups against a list (`58,500` vs `58, 500`),
//!      word answers that are anagrams (`xy` vs `yx`: products of symbols) are `Unknown`
//!      (docs/verify-differences.md, "NotEqual only when sure").
//!
//! The argument order is part of the API: the gold is extracted strictly and a bare gold is
//! used whole, while the output always goes through answer extraction.
//! Nothing here panics; recursion is bounded by [`MAX_DEPTH`] (deeper → `Unknown`).

use crate::extract::{extract, extract_answer, final_line_boxes, trim_answer, Source};
use std::cmp::Ordering;
use std::fmt;

/// Result codes; the integer values are API (numpy int8 in `verify_batch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i8)]
pub enum Verdict {
    NotEqual = 0,
    Equal = 1,
    Unknown = 2,
    NoAnswer = 3,
}

/// Nesting deeper than this (brackets, fractions, tuples) is not decided.
pub const MAX_DEPTH: usize = 32;
/// Sets, tuples and matrices larger than this are not decided (keeps comparison cheap).
const MAX_ELEMENTS: usize = 64;

/// Verdict for one (gold, output) pair. `gold` first: see the module doc.
pub fn verify(gold: &str, output: &str) -> Verdict {
    let Some(found) = extract(output, false) else {
        return Verdict::NoAnswer;
    };
    let Some(gold_text) = gold_answer(gold) else {
        return Verdict::Unknown;
    };
    let pred = match found.source {
        Source::Boxed => final_boxed_answer(output, found.text),
        _ => parse_answer(found.text),
    };
    let gold = parse_answer(gold_text);
    match (gold, pred) {
        (Some(g), Some(p)) => compare(&g, &p, 0),
        (_, None) => Verdict::NoAnswer,
        (None, _) => Verdict::Unknown,
    }
}

/// The answer of a response whose final answer is boxed: the last box, unless its line boxes
/// a different value too. `\boxed{16} or \boxed{18}` hedges: its answer is the set {16, 18},
/// which equals no single gold (as math-verify reads several answers) and a gold set of both;
/// the same value boxed twice is that value.
fn final_boxed_answer(output: &str, last: &str) -> Option<Value> {
    let (last_value, values, differ) = final_line_values(output, last)?;
    Some(if differ { Value::Set(values) } else { last_value })
}

/// The parsed boxes of the final line, the last box's value, and whether some box there is
/// surely a different value (`NotEqual`; an undecided pair is not a hedge).
fn final_line_values(output: &str, last: &str) -> Option<(Value, Vec<Value>, bool)> {
    let last_value = parse_answer(last)?;
    let boxes = final_line_boxes(output, MAX_ELEMENTS);
    if boxes.len() < 2 {
        return Some((last_value, Vec::new(), false)); // the common case: one box, parsed once
    }
    let values: Vec<Value> = boxes.into_iter().filter_map(parse_answer).collect();
    let differ = values.iter().any(|v| compare(v, &last_value, 0) == Verdict::NotEqual);
    Some((last_value, values, differ))
}

/// Whether the response's final answer is a hedge: its final line boxes two or more different
/// values, or its answer phrase offers different values joined by "or" (`The answer is 16 or
/// 18.`). The judge's answer gate pays a hedge nothing (small judges pay `\boxed{a} or
/// \boxed{b}` more than a wrong answer when one of them is the reference).
pub fn hedges(output: &str) -> bool {
    match extract(output, true) {
        Some(found) if found.source == Source::Boxed => final_line_values(output, found.text).is_some_and(|(_, _, d)| d),
        Some(found) => offers_alternatives(found.text),
        None => false,
    }
}

/// Whether an unboxed answer is alternatives joined by "or" of which two surely differ
/// (`16 or 18`; `18 or 18.0` and `x or y` with an unparsed side are not).
fn offers_alternatives(answer: &str) -> bool {
    if !answer.as_bytes().windows(4).any(|w| w.eq_ignore_ascii_case(b" or ")) {
        return false; // the common case: one value, no copy made
    }
    let lower = answer.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split(" or ").take(MAX_ELEMENTS).collect();
    if parts.len() < 2 {
        return false;
    }
    let Some(values) = parts.iter().map(|part| parse_answer(part.trim())).collect::<Option<Vec<Value>>>() else {
        return false;
    };
    values.iter().any(|v| compare(v, &values[0], 0) == Verdict::NotEqual)
}

/// [`hedges`] for each response (parallel when large).
pub fn hedges_batch<S: AsRef<str> + Sync>(outputs: &[S]) -> Vec<bool> {
    crate::extract::par_map(outputs.len(), |i| hedges(outputs[i].as_ref()))
}

/// Verdicts for aligned slices (parallel when large).
pub fn verify_batch<G: AsRef<str> + Sync, O: AsRef<str> + Sync>(
    golds: &[G],
    outputs: &[O],
) -> crate::Result<Vec<Verdict>> {
    if golds.len() != outputs.len() {
        return Err(crate::Error::LengthMismatch(format!(
            "golds has {} items but outputs has {}",
            golds.len(),
            outputs.len()
        )));
    }
    Ok(crate::extract::par_map(golds.len(), |i| verify(golds[i].as_ref(), outputs[i].as_ref())))
}

/// The canonical form of an answer string as a readable string (used for display and caching).
/// Unparseable input comes back trimmed.
pub fn normalize_answer(text: &str) -> String {
    let trimmed = trim_answer(text);
    match parse_answer(trimmed) {
        Some(v) => v.to_string(),
        None => trimmed.to_string(),
    }
}

/// The gold's answer text: extracted when it is a worked solution, else the whole (trimmed).
fn gold_answer(gold: &str) -> Option<&str> {
    let has_marker = gold.contains("\\boxed") || gold.contains("\\fbox") || gold.contains("####");
    let text = if has_marker { extract_answer(gold, true) } else { None };
    let text = text.unwrap_or_else(|| trim_answer(gold));
    (!text.is_empty()).then_some(text)
}

// ---------------------------------------------------------------------------------------------
// Rationals

/// Exact rational with `den > 0` and `gcd(num, den) == 1`. Every operation is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rational {
    num: i128,
    den: i128,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

impl Rational {
    pub fn new(num: i128, den: i128) -> Option<Self> {
        if den == 0 {
            return None;
        }
        let g = gcd(num, den);
        let (mut n, mut d) = (num / g, den / g);
        if d < 0 {
            n = n.checked_neg()?;
            d = d.checked_neg()?;
        }
        Some(Self { num: n, den: d })
    }
    pub fn int(n: i128) -> Self {
        Self { num: n, den: 1 }
    }
    pub fn is_integer(&self) -> bool {
        self.den == 1
    }
    fn add(self, o: Self) -> Option<Self> {
        let g = gcd(self.den, o.den);
        let d = (self.den / g).checked_mul(o.den)?;
        let n = self.num.checked_mul(o.den / g)?.checked_add(o.num.checked_mul(self.den / g)?)?;
        Self::new(n, d)
    }
    fn neg(self) -> Option<Self> {
        Some(Self { num: self.num.checked_neg()?, den: self.den })
    }
    fn sub(self, o: Self) -> Option<Self> {
        self.add(o.neg()?)
    }
    fn mul(self, o: Self) -> Option<Self> {
        let g1 = gcd(self.num, o.den).max(1);
        let g2 = gcd(o.num, self.den).max(1);
        Self::new((self.num / g1).checked_mul(o.num / g2)?, (self.den / g2).checked_mul(o.den / g1)?)
    }
    fn recip(self) -> Option<Self> {
        Self::new(self.den, self.num)
    }
    fn div(self, o: Self) -> Option<Self> {
        self.mul(o.recip()?)
    }
    fn pow(self, exp: i128) -> Option<Self> {
        if exp.unsigned_abs() > 256 {
            return None;
        }
        let mut acc = Self::int(1);
        for _ in 0..exp.unsigned_abs() {
            acc = acc.mul(self)?;
        }
        if exp < 0 {
            acc.recip()
        } else {
            Some(acc)
        }
    }
    fn pow10(exp: i128) -> Option<Self> {
        Self::int(10).pow(exp)
    }
    /// Exact square root when both parts are perfect squares.
    fn sqrt(self) -> Option<Self> {
        fn isqrt(n: i128) -> Option<i128> {
            if n < 0 {
                return None;
            }
            let r = (n as f64).sqrt() as i128;
            (r.saturating_sub(2)..=r.saturating_add(2)).find(|k| *k >= 0 && k.checked_mul(*k) == Some(n))
        }
        Self::new(isqrt(self.num)?, isqrt(self.den)?)
    }
    /// `round(self * 10^places)`, or `None` on an exact .5 tie (the reference rounds binary
    /// floats there, so a tie is not decidable) or overflow.
    fn rounded_scaled(self, places: i128) -> Option<i128> {
        let scaled = self.mul(Self::pow10(places)?)?;
        let floor = scaled.num.div_euclid(scaled.den);
        let rem2 = scaled.num.rem_euclid(scaled.den).checked_mul(2)?;
        match rem2.cmp(&scaled.den) {
            Ordering::Less => Some(floor),
            Ordering::Greater => floor.checked_add(1),
            Ordering::Equal => None,
        }
    }
}

impl fmt::Display for Rational {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.den == 1 {
            return write!(f, "{}", self.num);
        }
        // Denominators 2^a 5^b print as exact decimals, the rest as a/b.
        let mut d = self.den;
        let mut places = 0u32;
        while d % 10 == 0 || d % 2 == 0 || d % 5 == 0 {
            if d % 10 == 0 {
                d /= 10;
            } else if d % 2 == 0 {
                d /= 2;
            } else {
                d /= 5;
            }
            places += 1;
        }
        if d == 1 && places <= 30 {
            if let Some(scale) = 10i128.checked_pow(places) {
                if let Some(n) = self.num.checked_mul(scale / self.den) {
                    let sign = if n < 0 { "-" } else { "" };
                    let digits = format!("{:0>width$}", n.unsigned_abs(), width = places as usize + 1);
                    let (int, frac) = digits.split_at(digits.len() - places as usize);
                    return write!(f, "{sign}{int}.{}", frac.trim_end_matches('0'));
                }
            }
        }
        write!(f, "{}/{}", self.num, self.den)
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A number literal: its exact value (None on overflow), whether it had a decimal point
    /// or exponent, and its digits as written (for `\frac12`).
    /// `grouped`: digit groups were joined across a comma (`1,234`), which could also have
    /// been a list of two numbers.
    Num { value: Option<Rational>, float: bool, grouped: bool, digits: String },
    /// `\name` (letters) or `\c` for one non-letter `c`; `\begin{env}` is `begin:env`.
    Cmd(String),
    /// A run of letters; `text` when it came from `\text{..}`-like commands.
    Word { word: String, text: bool },
    Percent,
    Ch(char),
}

/// Commands that only change presentation.
const DROPPED_COMMANDS: &[&str] = &[
    "left", "right", ",", "!", ";", ":", " ", "quad", "qquad", "displaystyle", "textstyle",
    "big", "Big", "bigl", "bigr", "Bigl", "Bigr", "bigg", "Bigg", "biggl", "biggr", "(", ")", "[",
    "]", "$", "circ", "degree", "limits", "nolimits", "mathstrut", "\n", "hline",
];
/// Commands whose `{..}` argument is text (unwrapped; words inside count as text/units).
const TEXT_COMMANDS: &[&str] = &[
    "text", "textbf", "textit", "textrm", "textnormal", "mbox", "mathrm", "mathbf", "mathit",
    "mathsf", "mathtt", "operatorname", "textsf", "texttt", "emph", "hbox",
];

struct Lexer<'a> {
    chars: Vec<char>,
    i: usize,
    out: Vec<Tok>,
    /// For each open `{`: true when it is a text command's argument (its braces are dropped).
    braces: Vec<bool>,
    pending_text: bool,
    /// Open `(`, `[`, `\{` minus closed ones: inside them a plain comma separates items.
    brackets: i64,
    _src: &'a str,
}

fn lex(src: &str) -> Vec<Tok> {
    let mut lx = Lexer { chars: src.chars().collect(), i: 0, out: Vec::new(), braces: Vec::new(), pending_text: false, brackets: 0, _src: src };
    lx.run();
    lx.out
}

fn is_space(c: char) -> bool {
    c.is_whitespace() || c == '~' || c == '\u{2009}' || c == '\u{202F}' || c == '\u{00A0}'
}

impl Lexer<'_> {
    fn peek(&self, k: usize) -> Option<char> {
        self.chars.get(self.i + k).copied()
    }
    fn starts_with(&self, s: &str) -> bool {
        s.chars().enumerate().all(|(k, c)| self.chars.get(self.i + k) == Some(&c))
    }
    fn push(&mut self, t: Tok) {
        match &t {
            Tok::Ch('(' | '[') => self.brackets += 1,
            Tok::Ch(')' | ']') => self.brackets -= 1,
            Tok::Cmd(c) if c == "{" || c == "langle" => self.brackets += 1,
            Tok::Cmd(c) if c == "}" || c == "rangle" => self.brackets -= 1,
            _ => {}
        }
        self.out.push(t);
    }
    fn in_text(&self) -> bool {
        self.braces.iter().any(|t| *t)
    }

    fn run(&mut self) {
        while let Some(c) = self.peek(0) {
            if c.is_ascii_digit() || (c == '.' && self.peek(1).is_some_and(|d| d.is_ascii_digit())) {
                self.number();
                continue;
            }
            self.i += 1;
            match c {
                '\\' => self.command(),
                '{' => {
                    self.braces.push(self.pending_text);
                    if !self.pending_text {
                        self.push(Tok::Ch('{'));
                    }
                    self.pending_text = false;
                }
                '}' => {
                    if !self.braces.pop().unwrap_or(false) {
                        self.push(Tok::Ch('}'));
                    }
                }
                '^' if self.skip_degree() => {}
                '°' => {}
                '%' => self.push(Tok::Percent),
                '$' => {}
                '−' | '–' => self.push(Tok::Ch('-')),
                '×' => self.push(Tok::Cmd("times".into())),
                '÷' => self.push(Tok::Cmd("div".into())),
                '·' => self.push(Tok::Cmd("cdot".into())),
                '∞' => self.push(Tok::Cmd("infty".into())),
                'π' => self.push(Tok::Cmd("pi".into())),
                '√' => self.push(Tok::Cmd("sqrt".into())),
                c if is_space(c) => {}
                c if c.is_alphabetic() => self.word(c),
                c => self.push(Tok::Ch(c)),
            }
        }
    }

    /// After `^`: `\circ`, `{\circ}` or `°` is a degree mark (dropped with the caret).
    fn skip_degree(&mut self) -> bool {
        for pat in ["{\\circ}", "\\circ", "{°}", "°"] {
            if self.starts_with(pat) {
                self.i += pat.chars().count();
                return true;
            }
        }
        false
    }

    fn word(&mut self, first: char) {
        let mut word = String::from(first);
        while let Some(c) = self.peek(0).filter(|c| c.is_alphabetic()) {
            word.push(c);
            self.i += 1;
        }
        if word.eq_ignore_ascii_case("percent") {
            self.push(Tok::Percent);
        } else {
            let text = self.in_text();
            self.push(Tok::Word { word, text });
        }
    }

    fn command(&mut self) {
        let Some(c) = self.peek(0) else { return };
        let name: String = if c.is_ascii_alphabetic() {
            let start = self.i;
            while self.peek(0).is_some_and(|c| c.is_ascii_alphabetic()) {
                self.i += 1;
            }
            self.chars[start..self.i].iter().collect()
        } else {
            self.i += 1;
            c.to_string()
        };
        match name.as_str() {
            n if DROPPED_COMMANDS.contains(&n) => {}
            n if TEXT_COMMANDS.contains(&n) => {
                while self.peek(0).is_some_and(is_space) {
                    self.i += 1;
                }
                self.pending_text = self.peek(0) == Some('{');
            }
            "%" => self.push(Tok::Percent),
            "dfrac" | "tfrac" | "cfrac" => self.push(Tok::Cmd("frac".into())),
            "begin" | "end" => {
                // `\begin{pmatrix}` → Cmd("begin:pmatrix").
                let rest: String = self.chars[self.i..].iter().take(40).collect();
                if let Some(env) = rest.strip_prefix('{').and_then(|r| r.split_once('}')).map(|(e, _)| e.to_string()) {
                    self.i += env.chars().count() + 2;
                    self.push(Tok::Cmd(format!("{name}:{}", env.trim_end_matches('*'))));
                } else {
                    self.push(Tok::Cmd(name));
                }
            }
            _ => self.push(Tok::Cmd(name)),
        }
    }

    /// A separator that may sit between digit groups: its length in chars, and whether it is
    /// a comma that could also separate list items (`1,234` vs the list `1, 234`).
    /// Inside brackets a plain comma is never a digit group separator: `(12,102)` is a pair.
    fn group_separator(&self, at: usize) -> Option<(usize, bool)> {
        let c = *self.chars.get(at)?;
        let next = |k: usize| self.chars.get(at + k).copied();
        match c {
            // `10,\!080` (MATH's thousands idiom), then optional spaces.
            ',' if next(1) == Some('\\') && next(2) == Some('!') => {
                let spaces = (3..).take_while(|k| next(*k) == Some(' ')).count();
                Some((3 + spaces, true))
            }
            ',' if self.brackets == 0 => Some((1, true)),
            ' ' | '\u{2009}' | '\u{202F}' | '\u{00A0}' => Some((1, false)),
            '{' if next(1) == Some(',') && next(2) == Some('}') => Some((3, false)),
            '\\' if matches!(next(1), Some(',' | ' ' | '!' | ';')) => Some((2, false)),
            _ => None,
        }
    }

    fn number(&mut self) {
        let mut int = String::new();
        while let Some(d) = self.peek(0).filter(char::is_ascii_digit) {
            int.push(d);
            self.i += 1;
        }
        // Thousands groups: first group ≤ 3 digits, then exactly 3 digits per group.
        let mut grouped = false;
        if !int.is_empty() && int.len() <= 3 {
            while let Some((sep, comma)) = self.group_separator(self.i) {
                let g = self.i + sep;
                let three = (0..3).all(|k| self.chars.get(g + k).is_some_and(char::is_ascii_digit));
                let fourth = self.chars.get(g + 3).is_some_and(char::is_ascii_digit);
                if !three || fourth {
                    break;
                }
                int.extend(&self.chars[g..g + 3]);
                self.i = g + 3;
                grouped |= comma;
            }
        }
        let mut frac = String::new();
        let mut float = false;
        if self.peek(0) == Some('.') && self.peek(1).is_some_and(|d| d.is_ascii_digit()) {
            float = true;
            self.i += 1;
            while let Some(d) = self.peek(0).filter(char::is_ascii_digit) {
                frac.push(d);
                self.i += 1;
            }
        }
        // Scientific notation `1.5e3`, `2E-4` (not `2e` or `2ex`).
        let mut exp: i128 = 0;
        if matches!(self.peek(0), Some('e' | 'E')) {
            let mut k = 1;
            let neg = self.peek(1) == Some('-');
            if matches!(self.peek(1), Some('-' | '+')) {
                k += 1;
            }
            let start = self.i + k;
            let mut end = start;
            while self.chars.get(end).is_some_and(char::is_ascii_digit) {
                end += 1;
            }
            if end > start && end - start <= 4 && !self.chars.get(end).is_some_and(|c| c.is_alphabetic()) {
                let digits: String = self.chars[start..end].iter().collect();
                exp = digits.parse::<i128>().unwrap_or(0);
                if neg {
                    exp = -exp;
                }
                float = true;
                self.i = end;
            }
        }
        let value = (|| {
            let mantissa = int.chars().chain(frac.chars()).try_fold(0i128, |acc, d| {
                acc.checked_mul(10)?.checked_add(i128::from(d.to_digit(10)?))
            })?;
            let exp = exp.checked_sub(frac.len() as i128)?;
            if exp == 0 {
                return Some(Rational::int(mantissa));
            }
            Rational::int(mantissa).mul(Rational::pow10(exp)?)
        })();
        let mut digits = int;
        if float {
            digits.push('.');
            digits.push_str(&frac);
        }
        self.push(Tok::Num { value, float, grouped, digits });
    }
}

// ---------------------------------------------------------------------------------------------
// Values

/// A number as math-verify sees it: exact value, written with a decimal point, percentage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Number {
    value: Rational,
    float: bool,
    percent: bool,
    /// Written with comma digit groups (`1,234`): a list reading was possible too.
    grouped: bool,
}

#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Num(Number),
    /// +∞ (true) or −∞ (false).
    Inf(bool),
}

#[derive(Debug, Clone, PartialEq)]
enum Value {
    Scalar(Scalar),
    Tuple(Vec<Value>),
    Interval { lo: Box<Value>, hi: Box<Value>, lo_closed: bool, hi_closed: bool },
    Set(Vec<Value>),
    Union(Vec<Value>),
    Matrix(Vec<Vec<Value>>),
    Assign(String, Box<Value>),
    /// Words, lowercased; `plain` when some were not inside `\text{..}` (then, as maths, they
    /// are products of symbols: `ab` and `ba` are the same answer).
    Text { words: String, plain: bool },
    Symbolic(String),
}

fn parse_answer(text: &str) -> Option<Value> {
    let toks = lex(text);
    let toks = trim_tokens(&toks);
    if toks.is_empty() {
        return None;
    }
    // Deeper bracket nesting than MAX_DEPTH is not decided: checking it once up front keeps
    // the structural parse (a few scans per level) linear in practice.
    if max_nesting(toks) > MAX_DEPTH {
        return Some(symbolic(toks));
    }
    Some(parse_value(toks, 0))
}

fn max_nesting(toks: &[Tok]) -> usize {
    let mut depth = 0usize;
    let mut max = 0;
    for t in toks {
        if opens(t) {
            depth += 1;
            max = max.max(depth);
        } else if closes(t) {
            depth = depth.saturating_sub(1);
        }
    }
    max
}

/// Drop sentence punctuation at the ends.
fn trim_tokens(mut t: &[Tok]) -> &[Tok] {
    while let Some(Tok::Ch('.' | ',' | ';' | ':')) = t.last() {
        t = &t[..t.len() - 1];
    }
    while let Some(Tok::Ch(',' | ';' | ':')) = t.first() {
        t = &t[1..];
    }
    t
}

fn opens(t: &Tok) -> bool {
    matches!(t, Tok::Ch('(' | '[' | '{')) || matches!(t, Tok::Cmd(c) if c == "{" || c == "langle" || c.starts_with("begin:"))
}
fn closes(t: &Tok) -> bool {
    matches!(t, Tok::Ch(')' | ']' | '}')) || matches!(t, Tok::Cmd(c) if c == "}" || c == "rangle" || c.starts_with("end:"))
}

/// Split at top-level tokens matching `is_sep`.
fn split_top(toks: &[Tok], is_sep: impl Fn(&Tok) -> bool) -> Vec<&[Tok]> {
    let mut parts = Vec::new();
    let mut depth = 0i64;
    let mut start = 0;
    for (k, t) in toks.iter().enumerate() {
        if opens(t) {
            depth += 1;
        } else if closes(t) {
            depth -= 1;
        } else if depth == 0 && is_sep(t) {
            parts.push(&toks[start..k]);
            start = k + 1;
        }
    }
    parts.push(&toks[start..]);
    parts
}

/// Whether `toks[0]` and `toks[last]` are a bracket pair enclosing everything.
fn wraps_all(toks: &[Tok]) -> bool {
    if toks.len() < 2 || !opens(&toks[0]) || !closes(&toks[toks.len() - 1]) {
        return false;
    }
    let mut depth = 0i64;
    for (k, t) in toks.iter().enumerate() {
        if opens(t) {
            depth += 1;
        } else if closes(t) {
            depth -= 1;
            if depth == 0 && k + 1 < toks.len() {
                return false;
            }
        }
    }
    depth == 0
}

fn is_word(t: &Tok, w: &str) -> bool {
    matches!(t, Tok::Word { word, .. } if word.eq_ignore_ascii_case(w))
}
fn is_cmd(t: &Tok, c: &str) -> bool {
    matches!(t, Tok::Cmd(n) if n == c)
}

fn symbolic(toks: &[Tok]) -> Value {
    Value::Symbolic(canonical_text(toks))
}

/// Tokens written back without presentation (for identical-text comparison and display).
fn canonical_text(toks: &[Tok]) -> String {
    let mut s = String::new();
    for t in toks {
        match t {
            Tok::Num { value: Some(v), .. } => s.push_str(&v.to_string()),
            Tok::Num { digits, .. } => s.push_str(digits),
            Tok::Cmd(c) => {
                s.push('\\');
                s.push_str(c);
                s.push(' ');
            }
            Tok::Word { word, text: true } => {
                s.push_str(&word.to_lowercase());
                s.push(' ');
            }
            Tok::Word { word, .. } => s.push_str(word),
            Tok::Percent => s.push('%'),
            Tok::Ch(c) => s.push(*c),
        }
    }
    s.trim_end().to_string()
}

fn parse_value(toks: &[Tok], depth: usize) -> Value {
    let toks = trim_tokens(toks);
    if depth > MAX_DEPTH || toks.is_empty() {
        return symbolic(toks);
    }
    // "a and b", "x = 2 or x = -3": a set of the parts.
    let is_conjunction = |t: &Tok| is_word(t, "and") || is_word(t, "or");
    if split_top(toks, is_conjunction).len() > 1 {
        // `1, 2, and 3`: commas and conjunctions both separate items.
        let parts: Vec<&[Tok]> = split_top(toks, |t| is_conjunction(t) || matches!(t, Tok::Ch(',')))
            .into_iter()
            .filter(|p| !trim_tokens(p).is_empty())
            .collect();
        // Only a list of math values; "some words and x" stays symbolic.
        let set = collection(parts, depth, Value::Set);
        if let Value::Set(items) = &set {
            if items.iter().all(|v| !matches!(v, Value::Text { .. } | Value::Symbolic(_))) {
                return set;
            }
        }
        return symbolic(toks);
    }
    if is_cmd(&toks[0], "pm") && toks.len() > 1 {
        let plus = parse_value(&toks[1..], depth + 1);
        if let Value::Scalar(Scalar::Num(n)) = plus {
            if let Some(neg) = n.value.neg() {
                return Value::Set(vec![plus.clone(), Value::Scalar(Scalar::Num(Number { value: neg, ..n }))]);
            }
        }
        return symbolic(toks);
    }
    // A bare comma list is a set (as math-verify reads `1, 2`).
    let items = split_top(toks, |t| matches!(t, Tok::Ch(',')));
    if items.len() > 1 {
        return collection(items, depth, Value::Set);
    }
    // Assignment `x = 2` (chains `x = 1 + 1 = 2` keep the last right side).
    let sides = split_top(toks, |t| matches!(t, Tok::Ch('=')));
    if sides.len() > 1 {
        let lhs = sides[0];
        let is_var = lhs.len() == 1 && matches!(&lhs[0], Tok::Word { .. } | Tok::Cmd(_));
        let rhs = sides[sides.len() - 1];
        // A chain `x = 1 + 1 = 2` only when every middle side is a value too (not `x = 2 y = 3`).
        let chain_ok = sides[1..sides.len() - 1].iter().all(|m| !matches!(parse_value(m, depth + 1), Value::Symbolic(_)));
        if is_var && !rhs.is_empty() && chain_ok {
            return Value::Assign(canonical_text(lhs), Box::new(parse_value(rhs, depth + 1)));
        }
        return symbolic(toks);
    }
    let parts = split_top(toks, |t| is_cmd(t, "cup"));
    if parts.len() > 1 {
        return collection(parts, depth, Value::Union);
    }
    if wraps_all(toks) {
        let inner = &toks[1..toks.len() - 1];
        let (open, close) = (&toks[0], &toks[toks.len() - 1]);
        if is_cmd(open, "{") {
            let items = split_top(inner, |t| matches!(t, Tok::Ch(',')));
            return if items.len() == 1 && trim_tokens(items[0]).is_empty() {
                Value::Set(Vec::new())
            } else {
                collection(items, depth, Value::Set)
            };
        }
        if let Tok::Cmd(env) = open {
            if env.ends_with("matrix") {
                return matrix(inner, depth);
            }
        }
        let items = split_top(inner, |t| matches!(t, Tok::Ch(',')));
        if items.len() > 1 {
            let round_open = matches!(open, Tok::Ch('(')) || is_cmd(open, "langle");
            let round_close = matches!(close, Tok::Ch(')')) || is_cmd(close, "rangle");
            let brace = matches!(open, Tok::Ch('{'));
            if brace {
                return symbolic(toks);
            }
            let values: Vec<Value> = items.iter().map(|p| parse_value(p, depth + 1)).collect();
            let infinite = values.iter().any(|v| matches!(v, Value::Scalar(Scalar::Inf(_))));
            if values.len() == 2 && (!round_open || !round_close || infinite) && !is_cmd(open, "langle") {
                let mut it = values.into_iter();
                if let (Some(lo), Some(hi)) = (it.next(), it.next()) {
                    return Value::Interval { lo: Box::new(lo), hi: Box::new(hi), lo_closed: !round_open, hi_closed: !round_close };
                }
                return symbolic(toks);
            }
            if values.len() > MAX_ELEMENTS {
                return symbolic(toks);
            }
            return Value::Tuple(values);
        }
    }
    scalar_value(toks, depth)
}

fn collection(parts: Vec<&[Tok]>, depth: usize, make: fn(Vec<Value>) -> Value) -> Value {
    if parts.len() > MAX_ELEMENTS {
        return Value::Symbolic(String::from("<too many elements>"));
    }
    make(parts.into_iter().map(|p| parse_value(p, depth + 1)).collect())
}

fn matrix(inner: &[Tok], depth: usize) -> Value {
    let rows: Vec<Vec<Value>> = split_top(inner, |t| is_cmd(t, "\\"))
        .into_iter()
        .filter(|r| !r.is_empty())
        .map(|r| split_top(r, |t| matches!(t, Tok::Ch('&'))).into_iter().map(|c| parse_value(c, depth + 1)).collect())
        .collect();
    Value::Matrix(rows)
}

/// Units, currency and percent around a scalar, then exact evaluation.
fn scalar_value(toks: &[Tok], depth: usize) -> Value {
    let mut t = toks;
    // A run of plain words (no math) is a text answer.
    if t.iter().all(|x| matches!(x, Tok::Word { .. })) {
        let words: Vec<String> = t.iter().filter_map(|x| match x {
            Tok::Word { word, .. } => Some(word.to_lowercase()),
            _ => None,
        }).collect();
        let plain = t.iter().any(|x| matches!(x, Tok::Word { text: false, .. }));
        return Value::Text { words: words.join(" "), plain };
    }
    while let Some(first) = t.first() {
        if is_cmd(first, "$") || is_word(first, "USD") {
            t = &t[1..];
        } else {
            break;
        }
    }
    let mut percent = false;
    loop {
        match t.last() {
            Some(Tok::Percent) if !percent => {
                percent = true;
                t = &t[..t.len() - 1];
            }
            Some(Tok::Word { word, text }) if *text || is_unit_word(word) => {
                if is_function_name(word) {
                    break;
                }
                t = &t[..t.len() - 1];
            }
            // `inches^2`, `m^{2}` after a unit word.
            Some(Tok::Num { .. }) | Some(Tok::Ch('}')) if unit_power_len(t) > 0 => {
                t = &t[..t.len() - unit_power_len(t)];
            }
            Some(Tok::Ch('}')) if t.len() >= 2 && matches!(t[t.len() - 2], Tok::Ch('{')) => {
                t = &t[..t.len() - 2];
            }
            _ => break,
        }
    }
    let t = trim_tokens(t);
    if t.is_empty() {
        return symbolic(toks);
    }
    let mut p = ExprParser { toks: t, i: 0, depth, ok: true };
    match p.expr() {
        Some(s) if p.ok && p.i == t.len() => match s {
            Scalar::Num(n) => Value::Scalar(Scalar::Num(Number { percent, ..n })),
            inf if !percent => Value::Scalar(inf),
            _ => symbolic(toks),
        },
        _ => symbolic(toks),
    }
}

/// A plain (not `\text`) word read as a unit and dropped: a common short unit, or any word
/// of four or more letters. Other short letter runs are variables (`2ab` is not 2).
fn is_unit_word(w: &str) -> bool {
    const SHORT_UNITS: &[&str] = &[
        "cm", "mm", "km", "kg", "mg", "lb", "lbs", "oz", "ft", "yd", "yds", "mi", "mph", "kph",
        "hr", "hrs", "min", "mins", "sec", "secs", "ml", "mL", "cc", "in", "sq", "cu", "gal",
        "qt", "pt", "pts", "day", "yr", "yrs", "usd", "USD", "ton", "cup", "GB", "MB", "KB", "kW",
    ];
    SHORT_UNITS.contains(&w) || (w.chars().count() >= 4 && !is_function_name(w))
}

fn is_function_name(w: &str) -> bool {
    matches!(w, "sin" | "cos" | "tan" | "log" | "ln" | "exp" | "sec" | "csc" | "cot")
}

/// Length of a trailing `^2` / `^{2}` that follows a unit word (0 if none).
fn unit_power_len(t: &[Tok]) -> usize {
    let n = t.len();
    let unit_before = |k: usize| k > 0 && matches!(&t[k - 1], Tok::Word { word, text } if *text || is_unit_word(word));
    if n >= 3 && matches!(t[n - 1], Tok::Num { .. }) && matches!(t[n - 2], Tok::Ch('^')) && unit_before(n - 2) {
        return 2;
    }
    if n >= 5
        && matches!(t[n - 1], Tok::Ch('}'))
        && matches!(t[n - 2], Tok::Num { .. })
        && matches!(t[n - 3], Tok::Ch('{'))
        && matches!(t[n - 4], Tok::Ch('^'))
        && unit_before(n - 4)
    {
        return 4;
    }
    0
}

/// Recursive-descent evaluator over numeric tokens. Returns `None` (or sets `ok = false`) on
/// anything it cannot evaluate exactly: the caller then treats the text as symbolic.
struct ExprParser<'t> {
    toks: &'t [Tok],
    i: usize,
    depth: usize,
    ok: bool,
}

impl ExprParser<'_> {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.i)
    }
    fn eat_ch(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Ch(c)) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn expr(&mut self) -> Option<Scalar> {
        self.enter()?;
        let mut acc = self.term()?;
        loop {
            let sign = match self.peek() {
                Some(Tok::Ch('+')) => true,
                Some(Tok::Ch('-')) => false,
                _ => break,
            };
            self.i += 1;
            let rhs = self.term()?;
            acc = combine(acc, rhs, |a, b| if sign { a.add(b) } else { a.sub(b) })?;
        }
        self.depth -= 1;
        Some(acc)
    }

    fn term(&mut self) -> Option<Scalar> {
        let mut acc = self.unary()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Ch('*')) => '*',
                Some(Tok::Cmd(c)) if c == "cdot" || c == "times" => '*',
                Some(Tok::Ch('/')) => '/',
                Some(Tok::Cmd(c)) if c == "div" => '/',
                // Implicit product: `2(3)`, `2\sqrt{4}`; a mixed number `3\frac12` adds.
                Some(Tok::Ch('(')) | Some(Tok::Cmd(_)) => '.',
                _ => break,
            };
            if op != '.' {
                self.i += 1;
            }
            let mixed = op == '.'
                && matches!(self.peek(), Some(Tok::Cmd(c)) if c == "frac")
                && self.i > 0
                && matches!(&self.toks[self.i - 1], Tok::Num { float: false, .. });
            let rhs = self.unary()?;
            acc = match op {
                '/' => combine(acc, rhs, Rational::div)?,
                _ if mixed => combine(acc, rhs, |a, b| if a.num < 0 { a.sub(b) } else { a.add(b) })?,
                _ => combine(acc, rhs, Rational::mul)?,
            };
        }
        Some(acc)
    }

    fn unary(&mut self) -> Option<Scalar> {
        if self.eat_ch('-') {
            self.enter()?;
            let v = self.unary()?;
            self.depth -= 1;
            return match v {
                Scalar::Num(n) => Some(Scalar::Num(Number { value: n.value.neg()?, ..n })),
                Scalar::Inf(pos) => Some(Scalar::Inf(!pos)),
            };
        }
        if self.eat_ch('+') {
            return self.unary();
        }
        self.postfix()
    }

    fn postfix(&mut self) -> Option<Scalar> {
        let mut base = self.atom()?;
        if self.eat_ch('^') {
            let exp = self.atom()?;
            base = match (base, exp) {
                (Scalar::Num(b), Scalar::Num(e)) if e.value.is_integer() && !e.float => {
                    Scalar::Num(Number { value: b.value.pow(e.value.num)?, ..b })
                }
                _ => return None,
            };
        }
        while self.eat_ch('!') {
            base = match base {
                Scalar::Num(n) if n.value.is_integer() && !n.float && (0..=33).contains(&n.value.num) => {
                    let f = (1..=n.value.num).try_fold(1i128, |acc, k| acc.checked_mul(k))?;
                    Scalar::Num(Number { value: Rational::int(f), ..n })
                }
                _ => return None,
            };
        }
        Some(base)
    }

    /// A `{..}` group or a single atom (a LaTeX macro argument).
    fn argument(&mut self) -> Option<Scalar> {
        if self.eat_ch('{') {
            let v = self.expr()?;
            return self.eat_ch('}').then_some(v);
        }
        self.atom()
    }

    fn atom(&mut self) -> Option<Scalar> {
        let tok = self.peek()?.clone();
        self.i += 1;
        match tok {
            Tok::Num { value, float, grouped, .. } => Some(Scalar::Num(Number { value: value?, float, percent: false, grouped })),
            Tok::Ch('(') | Tok::Ch('{') | Tok::Ch('[') => {
                let close = match tok {
                    Tok::Ch('(') => ')',
                    Tok::Ch('{') => '}',
                    _ => ']',
                };
                let v = self.expr()?;
                self.eat_ch(close).then_some(v)
            }
            Tok::Cmd(c) => match c.as_str() {
                "frac" => {
                    // `\frac12`: two one-digit arguments written together.
                    if let Some(Tok::Num { digits, float: false, .. }) = self.peek() {
                        let d: Vec<char> = digits.chars().collect();
                        if d.len() == 2 {
                            self.i += 1;
                            let (n, m) = (d[0].to_digit(10)?, d[1].to_digit(10)?);
                            return Some(num(Rational::new(n.into(), m.into())?));
                        }
                    }
                    let n = self.argument()?;
                    let d = self.argument()?;
                    combine(n, d, Rational::div)
                }
                "sqrt" => {
                    if self.peek() == Some(&Tok::Ch('[')) {
                        return None; // n-th roots: not decided here
                    }
                    match self.argument()? {
                        Scalar::Num(n) if !n.float => Some(Scalar::Num(Number { value: n.value.sqrt()?, ..n })),
                        _ => None,
                    }
                }
                "infty" | "infin" => Some(Scalar::Inf(true)),
                _ => None,
            },
            _ => None,
        }
    }
}

fn num(value: Rational) -> Scalar {
    Scalar::Num(Number { value, float: false, percent: false, grouped: false })
}

/// Arithmetic on two finite numbers; a float operand makes the result a float (as in sympy).
fn combine(a: Scalar, b: Scalar, op: impl Fn(Rational, Rational) -> Option<Rational>) -> Option<Scalar> {
    match (a, b) {
        (Scalar::Num(x), Scalar::Num(y)) => Some(Scalar::Num(Number {
            value: op(x.value, y.value)?,
            float: x.float || y.float,
            percent: false,
            grouped: x.grouped || y.grouped,
        })),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Comparison

fn all_of(verdicts: impl Iterator<Item = Verdict>) -> Verdict {
    let mut out = Verdict::Equal;
    for v in verdicts {
        match v {
            Verdict::NotEqual => return Verdict::NotEqual,
            Verdict::Equal => {}
            _ => out = Verdict::Unknown,
        }
    }
    out
}

fn compare(gold: &Value, pred: &Value, depth: usize) -> Verdict {
    use Value::*;
    if depth > MAX_DEPTH {
        return Verdict::Unknown;
    }
    let d = depth + 1;
    match (gold, pred) {
        (Assign(gl, gv), Assign(pl, pv)) => {
            if gl == pl {
                compare(gv, pv, d)
            } else {
                Verdict::Unknown
            }
        }
        (Assign(_, gv), p) => compare(gv, p, d),
        (g, Assign(_, pv)) => compare(g, pv, d),
        (Scalar(a), Scalar(b)) => compare_scalars(a, b),
        (Text { words: a, plain: pa }, Text { words: b, plain: pb }) => {
            if a == b {
                Verdict::Equal
            } else if (*pa || *pb) && same_letters(a, b) {
                Verdict::Unknown // `ab` vs `ba`: equal as products of symbols
            } else {
                Verdict::NotEqual
            }
        }
        (Symbolic(a), Symbolic(b)) if a == b => Verdict::Equal,
        (Symbolic(_), _) | (_, Symbolic(_)) => Verdict::Unknown,
        (Tuple(a), Tuple(b)) => {
            if a.len() != b.len() {
                Verdict::NotEqual
            } else {
                all_of(a.iter().zip(b).map(|(x, y)| compare(x, y, d)))
            }
        }
        (Matrix(a), Matrix(b)) => {
            if a.len() != b.len() || a.iter().zip(b).any(|(x, y)| x.len() != y.len()) {
                Verdict::NotEqual
            } else {
                all_of(a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y)).map(|(x, y)| compare(x, y, d)))
            }
        }
        (Interval { lo: a0, hi: a1, lo_closed: ac0, hi_closed: ac1 }, Interval { lo: b0, hi: b1, lo_closed: bc0, hi_closed: bc1 }) => {
            let bounds = all_of([compare(a0, b0, d), compare(a1, b1, d)].into_iter());
            if bounds == Verdict::Equal && (ac0 != bc0 || ac1 != bc1) {
                Verdict::NotEqual
            } else {
                bounds
            }
        }
        // `(a, b)` is read as a tuple; math-verify reads it as an open interval when a < b.
        (Interval { .. }, Tuple(t)) | (Tuple(t), Interval { .. }) if t.len() != 2 => Verdict::NotEqual,
        (Interval { lo_closed, hi_closed, .. }, Tuple(_)) | (Tuple(_), Interval { lo_closed, hi_closed, .. }) => {
            if *lo_closed || *hi_closed {
                Verdict::NotEqual
            } else {
                Verdict::Unknown
            }
        }
        (Set(a), Set(b)) | (Union(a), Union(b)) => compare_unordered(a, b, d),
        (Scalar(_), Set(s)) | (Set(s), Scalar(_)) if s.len() <= 1 => Verdict::Unknown,
        // `1,234` next to a list: it may have been the list `1, 234`.
        (Scalar(crate::verify::Scalar::Num(n)), Tuple(_) | Set(_) | Interval { .. } | Union(_) | Matrix(_))
        | (Tuple(_) | Set(_) | Interval { .. } | Union(_) | Matrix(_), Scalar(crate::verify::Scalar::Num(n)))
            if n.grouped =>
        {
            Verdict::Unknown
        }
        (Scalar(_) | Text { .. }, Tuple(_) | Set(_) | Interval { .. } | Union(_) | Matrix(_))
        | (Tuple(_) | Set(_) | Interval { .. } | Union(_) | Matrix(_), Scalar(_) | Text { .. }) => Verdict::NotEqual,
        // A plain `e` or `pi` may be the constant: a CAS decides.
        (Scalar(crate::verify::Scalar::Num(_)), Text { words, plain: true })
        | (Text { words, plain: true }, Scalar(crate::verify::Scalar::Num(_)))
            if matches!(words.as_str(), "e" | "pi") =>
        {
            Verdict::Unknown
        }
        (Scalar(crate::verify::Scalar::Num(_)), Text { .. }) | (Text { .. }, Scalar(crate::verify::Scalar::Num(_))) => Verdict::NotEqual,
        _ => Verdict::Unknown,
    }
}

/// Whether two word answers use the same letters (ignoring order, case and spaces).
fn same_letters(a: &str, b: &str) -> bool {
    let letters = |s: &str| {
        let mut v: Vec<char> = s.chars().filter(|c| !c.is_whitespace()).collect();
        v.sort_unstable();
        v
    };
    letters(a) == letters(b)
}

/// Order-free comparison: every element must have an Equal partner (and sizes match).
fn compare_unordered(a: &[Value], b: &[Value], depth: usize) -> Verdict {
    let a = dedup(a, depth);
    let b = dedup(b, depth);
    let (Some(a), Some(b)) = (a, b) else { return Verdict::Unknown };
    let mut used = vec![false; b.len()];
    let mut undecided = false;
    for x in &a {
        let mut matched = false;
        let mut maybe = false;
        for (k, y) in b.iter().enumerate() {
            if used[k] {
                continue;
            }
            match compare(x, y, depth) {
                Verdict::Equal => {
                    used[k] = true;
                    matched = true;
                    break;
                }
                Verdict::NotEqual => {}
                _ => maybe = true,
            }
        }
        if !matched {
            if maybe {
                undecided = true;
            } else {
                return Verdict::NotEqual;
            }
        }
    }
    if undecided {
        Verdict::Unknown
    } else if a.len() == b.len() {
        Verdict::Equal
    } else {
        Verdict::NotEqual
    }
}

/// Remove elements Equal to an earlier one; `None` when that cannot be decided.
fn dedup(xs: &[Value], depth: usize) -> Option<Vec<&Value>> {
    let mut out: Vec<&Value> = Vec::new();
    for x in xs {
        let mut dup = false;
        for y in &out {
            match compare(x, y, depth) {
                Verdict::Equal => dup = true,
                Verdict::NotEqual => {}
                _ => return None,
            }
        }
        if !dup {
            out.push(x);
        }
    }
    Some(out)
}

fn compare_scalars(a: &Scalar, b: &Scalar) -> Verdict {
    let (x, y) = match (a, b) {
        (Scalar::Inf(p), Scalar::Inf(q)) => return if p == q { Verdict::Equal } else { Verdict::NotEqual },
        (Scalar::Inf(_), _) | (_, Scalar::Inf(_)) => return Verdict::NotEqual,
        (Scalar::Num(x), Scalar::Num(y)) => (x, y),
    };
    let verdict = compare_numbers(x, y);
    if verdict == Verdict::NotEqual && x.percent != y.percent {
        // `12.5` vs `12.5%`: a "what percent" gold is often written without the sign, so a
        // percent on one side only is NotEqual only when the values differ without it too.
        let plain = |n: &Number| Number { percent: false, ..*n };
        if compare_numbers(&plain(x), &plain(y)) != Verdict::NotEqual {
            return Verdict::Unknown;
        }
    }
    verdict
}

/// math-verify's rules for two finite numbers (see the module doc).
fn compare_numbers(x: &Number, y: &Number) -> Verdict {
    let eq = |same: bool| if same { Verdict::Equal } else { Verdict::NotEqual };
    let with_percent = |n: &Number| if n.percent { n.value.div(Rational::int(100)) } else { Some(n.value) };
    if x.float || y.float {
        // math-verify: `a.round(6) == b.round(6)` when either side is a float.
        let (Some(xv), Some(yv)) = (with_percent(x), with_percent(y)) else { return Verdict::Unknown };
        return match (xv.rounded_scaled(6), yv.rounded_scaled(6)) {
            (Some(p), Some(q)) => eq(p == q),
            _ => Verdict::Unknown,
        };
    }
    if x.value.is_integer() && y.value.is_integer() {
        // math-verify: integers compare without their percent sign (`9% == 9`).
        return eq(x.value == y.value);
    }
    match (with_percent(x), with_percent(y)) {
        (Some(p), Some(q)) => eq(p == q),
        _ => Verdict::Unknown,
    }
}

// ---------------------------------------------------------------------------------------------
// Display (the canonical text of `normalize_answer`)

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |items: &[Value]| items.iter().map(Value::to_string).collect::<Vec<_>>().join(", ");
        match self {
            Value::Scalar(Scalar::Num(n)) => write!(f, "{}{}", n.value, if n.percent { "%" } else { "" }),
            Value::Scalar(Scalar::Inf(true)) => f.write_str("\\infty"),
            Value::Scalar(Scalar::Inf(false)) => f.write_str("-\\infty"),
            Value::Tuple(items) => write!(f, "({})", join(items)),
            Value::Set(items) => {
                let mut parts: Vec<String> = items.iter().map(Value::to_string).collect();
                parts.sort();
                write!(f, "\\{{{}\\}}", parts.join(", "))
            }
            Value::Union(items) => {
                let mut parts: Vec<String> = items.iter().map(Value::to_string).collect();
                parts.sort();
                f.write_str(&parts.join(" \\cup "))
            }
            Value::Interval { lo, hi, lo_closed, hi_closed } => {
                write!(f, "{}{}, {}{}", if *lo_closed { "[" } else { "(" }, lo, hi, if *hi_closed { "]" } else { ")" })
            }
            Value::Matrix(rows) => {
                let rows: Vec<String> = rows.iter().map(|r| format!("[{}]", join(r))).collect();
                write!(f, "[{}]", rows.join(", "))
            }
            Value::Assign(lhs, v) => write!(f, "{lhs} = {v}"),
            Value::Text { words: t, .. } | Value::Symbolic(t) => f.write_str(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Verdict::*;
    use super::*;

    fn v(gold: &str, out: &str) -> Verdict {
        verify(gold, out)
    }

    #[test]
    fn integers_and_separators() {
        assert_eq!(v("1000", "The answer is 1,000."), Equal);
        assert_eq!(v("1000", r"\boxed{1{,}000}"), Equal);
        assert_eq!(v("78318333", r"So it is 78\,318\,333."), Equal);
        assert_eq!(v("1000", "The answer is 1\u{2009}000"), Equal);
        assert_eq!(v("1000", "#### 1001"), NotEqual);
        assert_eq!(v("-4", "#### -4"), Equal);
        assert_eq!(v("5", r"\boxed{-5}"), NotEqual);
    }

    #[test]
    fn several_boxed_values_on_the_final_line_are_a_hedge() {
        // The answer is the set of the line's boxes: right only against a gold set of all of them.
        assert_eq!(v("18", r"The answer is \boxed{16} or \boxed{18}."), NotEqual);
        assert_eq!(v("16", r"The answer is \boxed{16} or \boxed{18}."), NotEqual);
        assert_eq!(v("18", r"It is one of \boxed{21}, \boxed{18}, \boxed{28}."), NotEqual);
        assert_eq!(v(r"\{3, 5\}", r"So $x = \boxed{3}$ or $x = \boxed{5}$."), Equal);
        // The same value boxed twice, boxes on earlier lines, and a box around the final one.
        assert_eq!(v("18", r"\boxed{18} dollars, i.e. \boxed{18.0}"), Equal);
        assert_eq!(v("18", "First \\boxed{16} apples.\nSo the answer is \\boxed{18}."), Equal);
        assert_eq!(v("3", r"\boxed{\boxed{3}}"), Equal);
        assert!(hedges(r"The answer is \boxed{16} or \boxed{18}."));
        for answer in [r"\boxed{18} dollars, i.e. \boxed{18.0}", "\\boxed{16}\nSo \\boxed{18}", r"\boxed{x+1} or \boxed{1+x}"] {
            assert!(!hedges(answer), "{answer}");
        }
        // An unboxed answer phrase that offers different values is a hedge too.
        for answer in ["The answer is 16 or 18.", "#### 16 or 18", "The answer is 16 OR 18 apples."] {
            assert!(hedges(answer), "{answer}");
        }
        for answer in ["The answer is 18 or 18.0.", "The answer is 16.", "The answer is red or blue."] {
            assert!(!hedges(answer), "{answer}");
        }
    }

    #[test]
    fn decimals_fractions_mixed() {
        assert_eq!(v(r"\frac{1}{2}", "The answer is 0.5"), Equal);
        assert_eq!(v(r"\frac{1}{3}", r"\boxed{0.333333}"), Equal);
        assert_eq!(v(r"\frac{7}{3}", r"\boxed{2.33}"), NotEqual);
        assert_eq!(v(r"\dfrac{3}{4}", r"\boxed{\tfrac34}"), Equal);
        assert_eq!(v(r"\frac12", r"\boxed{2/4}"), Equal);
        assert_eq!(v(r"3\frac{1}{2}", r"\boxed{3.5}"), Equal);
        assert_eq!(v(r"3\frac{1}{2}", r"\boxed{\frac{3}{2}}"), NotEqual);
        assert_eq!(v("2", "Rounding, the answer is 2.00."), Equal);
        assert_eq!(v("1500", r"\boxed{1.5\times 10^{3}}"), Equal);
        assert_eq!(v("1500", r"\boxed{1.5e3}"), Equal);
        assert_eq!(v(r"\frac{1}{0}", r"\boxed{1}"), Unknown);
    }

    #[test]
    fn percents_and_order() {
        assert_eq!(v("0.125", "It is 12.5 percent."), Equal);
        assert_eq!(v(r"$62.5\%$", r"\boxed{62.5}"), Unknown); // equal without the sign: not sure
        assert_eq!(v(r"$62.5\%$", r"\boxed{0.625}"), Equal);
        assert_eq!(v(r"$62.5\%$", r"\boxed{63}"), NotEqual);
        assert_eq!(v(r"40\%", "The increase is 40%."), Equal);
        assert_eq!(v(r"\frac{1}{2}", "The answer is 50%"), Equal);
    }

    #[test]
    fn units_text_degrees_money() {
        assert_eq!(v("768", "Answer: 768 miles"), Equal);
        assert_eq!(v(r"621 \text{ inches}^2", r"\boxed{621 \text{ inches}^2}"), Equal);
        assert_eq!(v("900", r"\boxed{900\,\text{kg}}"), Equal);
        assert_eq!(v(r"90^\circ", r"\boxed{90}"), Equal);
        assert_eq!(v("90", r"\boxed{90^{\circ}}"), Equal);
        assert_eq!(v("90", "The answer is 90°"), Equal);
        assert_eq!(v("18", "#### $18"), Equal);
        assert_eq!(v(r"\text{Evelyn}", r"\boxed{\text{evelyn}}"), Equal);
        assert_eq!(v(r"\text{Evelyn}", r"\boxed{\text{Bob}}"), NotEqual);
    }

    #[test]
    fn structures() {
        assert_eq!(v(r"\left( 3, \frac{\pi}{2} \right)", r"\boxed{(3, \frac{\pi}{2})}"), Equal);
        assert_eq!(v("(1, 2)", r"\boxed{(2, 1)}"), NotEqual);
        assert_eq!(v("[1, 2)", r"\boxed{[1,2)}"), Equal);
        assert_eq!(v("[1, 2]", r"\boxed{(1,2]}"), NotEqual);
        assert_eq!(v(r"[-2, \infty)", r"\boxed{(-2,\infty)}"), NotEqual);
        assert_eq!(v(r"\{1, 2, 3\}", r"\boxed{\{3,2,1\}}"), Equal);
        assert_eq!(v(r"\{1, 2, 3\}", r"\boxed{x=1, x=2, x=3}"), Equal);
        assert_eq!(v(r"\{-1, 1\}", r"\boxed{\pm 1}"), Equal);
        assert_eq!(v(r"\{1, 2, 3\}", r"\boxed{1,2, \text{ and } 3}"), Equal);
        assert_eq!(v(r"\{-1, 1\}", r"\boxed{1 \text{ and } -1}"), Equal);
        assert_eq!(v(r"(-\infty, 0) \cup (1, \infty)", r"\boxed{(1,\infty)\cup(-\infty,0)}"), Equal);
        assert_eq!(v(r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\boxed{\begin{bmatrix} 1 \\ 2 \end{bmatrix}}"), Equal);
        assert_eq!(v(r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}", r"\boxed{\begin{pmatrix} 2 \\ 1 \end{pmatrix}}"), NotEqual);
        assert_eq!(v("x = 2", r"\boxed{2}"), Equal);
    }

    #[test]
    fn symbolic_is_unknown_unless_identical() {
        assert_eq!(v(r"\sin^2 x + \cos^2 x", r"\boxed{1}"), Unknown);
        assert_eq!(v(r"6\pi", r"\boxed{6 \pi}"), Equal);
        assert_eq!(v(r"2\sqrt{3}", r"\boxed{\sqrt{12}}"), Unknown);
        assert_eq!(v("5!", r"\boxed{120}"), Equal);
        assert_eq!(v(r"\sqrt{16}", r"\boxed{4}"), Equal);
    }

    /// NotEqual only when both sides parse completely into a supported normal form.
    #[test]
    fn not_equal_only_when_sure() {
        // `,\!` digit groups (MATH's thousands idiom) are one number.
        assert_eq!(v(r"10,\!080", r"\boxed{10080}"), Equal);
        assert_eq!(v("10080", r"\boxed{10,\!080}"), Equal);
        assert_eq!(v(r"11,\! 111,\! 111,\! 100", r"\boxed{11111111100}"), Equal);
        // Inside brackets a comma separates items: `(12,102)` is a pair, not 12102.
        assert_eq!(v(r"(2,12) \cup (12,102)", r"\boxed{(2, 12) \cup (12, 102)}"), Equal);
        assert_eq!(v("(12,102)", r"\boxed{(12,\,102)}"), Equal);
        assert_eq!(v("(12,102)", r"\boxed{12102}"), NotEqual);
        // `58,500` may be the number or the list: against a list it is not decided.
        assert_eq!(v("58,500", r"\boxed{\{58, 500\}}"), Unknown);
        assert_eq!(v("58,500", r"\boxed{58500}"), Equal);
        // A percent on one side only: NotEqual only when the values differ without it too.
        assert_eq!(v("12.5", "The percentage increase is 12.5%."), Unknown);
        assert_eq!(v(r"12.5\%", r"\boxed{12.5}"), Unknown);
        assert_eq!(v("12.5", r"\boxed{13\%}"), NotEqual);
        assert_eq!(v("0.125", r"\boxed{12.5\%}"), Equal);
        // Letters are symbols: `xy` = `yx`, and `2ab` is not the number 2 with a unit.
        assert_eq!(v("xy", r"\boxed{yx}"), Unknown);
        assert_eq!(v("xy", r"\boxed{xz}"), NotEqual);
        assert_eq!(v("2ab", r"\boxed{2}"), Unknown);
        assert_eq!(v("2", r"\boxed{2ab}"), Unknown);
        assert_eq!(v("5", r"\boxed{5 cm}"), Equal);
        assert_eq!(v("e", r"\boxed{2.718282}"), Unknown);
        // `x = 2 y = 3` is not the chain `x = 1 + 1 = 2`.
        assert_eq!(v("(2, 3)", r"\boxed{x = 2 \quad y = 3}"), Unknown);
        assert_eq!(v("2", r"\boxed{x = 1 + 1 = 2}"), Equal);
    }

    #[test]
    fn no_answer_and_gold_forms() {
        assert_eq!(v("5", ""), NoAnswer);
        assert_eq!(v("5", "no digits"), NoAnswer);
        assert_eq!(v("", "The answer is 5"), Unknown);
        assert_eq!(v("Work... #### 1,000", "1000"), Equal);
        assert_eq!(v(r"so \boxed{\frac{1}{2}}", "0.5"), Equal);
    }

    #[test]
    fn normalize() {
        assert_eq!(normalize_answer(r"\dfrac{6}{4}"), "1.5");
        assert_eq!(normalize_answer(r"\frac{1}{3}"), "1/3");
        assert_eq!(normalize_answer("1,000"), "1000");
        assert_eq!(normalize_answer(r"\{2, 1\}"), r"\{1, 2\}");
        assert_eq!(normalize_answer(r"$12.5\%$"), "12.5%");
    }

    #[test]
    fn batch_length_mismatch() {
        assert!(verify_batch(&["1"], &["1", "2"]).is_err());
        assert_eq!(verify_batch(&["1", "2"], &["1", "3"]), Ok(vec![Equal, NotEqual]));
    }
}

/// Deterministic fuzzing: extraction and verification on generated inputs must never panic
/// (`cargo test --release`; the debug build runs fewer). Speed on hostile inputs is measured by
/// `cargo bench --bench extract` (the `hostile_*` rows), not asserted here.
#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::extract::{extract_answer, hostile_inputs};

    /// xorshift64*: tiny, deterministic, good enough to mix inputs.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    const PIECES: &[&str] = &[
        r"\boxed{", r"\fbox{", "{", "}", r"\frac", r"\dfrac", "12", "3.5", "0", "7", ",", "$", "$$",
        r"\left(", r"\right)", "(", ")", "[", "]", r"\{", r"\}", "#### ", "The answer is ", "Answer: ",
        "\nA: ", "%", r"\%", "^", r"^\circ", r"\text{ kg}", r"\pm", r"\cup", r"\infty", "-", "+", "/",
        "=", "x", " and ", r"\sqrt", "!", "e5", " ", "\n", r"\,", "{,}", r"\begin{pmatrix}",
        r"\end{pmatrix}", "&", r"\\", "é", "😀", "\u{2009}", ".", r"\(", r"\)", r"\[", r"\]", "**",
        r"\cdot", r"\times", "10^{3}", "999999999999999999999", "1,000", " percent", r"\mathrm{m}",
    ];

    fn random_unicode(rng: &mut Rng) -> String {
        let len = rng.below(120);
        (0..len)
            .map(|_| match rng.below(4) {
                0 => char::from(rng.below(128) as u8),
                1 => char::from_u32(rng.below(0x800) as u32).unwrap_or('?'),
                2 => char::from_u32(rng.below(0x11_0000) as u32).unwrap_or('\u{FFFD}'),
                _ => ['{', '}', '\\', '$', '#', '(', ')', ','][rng.below(8)],
            })
            .collect()
    }

    fn token_soup(rng: &mut Rng) -> String {
        let len = rng.below(40);
        (0..len).map(|_| PIECES[rng.below(PIECES.len())]).collect()
    }

    fn deep_nesting(rng: &mut Rng) -> String {
        let depth = 1 + rng.below(200);
        let (open, close) = [("{", "}"), ("(", ")"), (r"\frac{1}{1+", "}"), (r"\boxed{", "}"), (r"\left(", r"\right)"), (r"\sqrt{", "}"), (r"\{", r"\}")][rng.below(7)];
        let closes = if rng.below(2) == 0 { depth } else { rng.below(depth + 1) };
        format!("The answer is ${}{}{}$", open.repeat(depth), 1 + rng.below(9), close.repeat(closes))
    }

    fn input(rng: &mut Rng) -> String {
        match rng.below(3) {
            0 => random_unicode(rng),
            1 => token_soup(rng),
            _ => deep_nesting(rng),
        }
    }

    #[test]
    fn a_million_generated_inputs_without_panic() {
        let n: usize = if cfg!(debug_assertions) { 20_000 } else { 1_000_000 };
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut verdicts = [0usize; 4];
        for _ in 0..n {
            let output = input(&mut rng);
            let gold = if rng.below(2) == 0 { token_soup(&mut rng) } else { (rng.below(1000)).to_string() };
            let strict = rng.below(2) == 0;
            let _ = std::hint::black_box(extract_answer(&output, strict));
            verdicts[verify(&gold, &output) as usize] += 1;
        }
        // Every verdict kind occurs: the generator reaches all of verify's outcomes.
        assert!(verdicts.iter().filter(|&&k| k > 0).count() >= 3, "verdicts {verdicts:?}");
    }

    /// Huge hostile inputs (400 kB) finish without panic or stack overflow; that they are linear
    /// is measured by the `hostile_*` rows of `cargo bench --bench extract` (100 kB vs 400 kB).
    #[test]
    fn huge_hostile_inputs_do_not_panic() {
        for text in hostile_inputs(400_000) {
            let _ = std::hint::black_box(extract_answer(&text, false));
            let _ = std::hint::black_box(verify("1", &text));
            let _ = std::hint::black_box(verify(&text, &text));
        }
    }
}
