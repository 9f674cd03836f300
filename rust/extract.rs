//! Final-answer extraction from a model's response (kernel 1).
//!
//! # Priority order
//! The first rule that finds something wins; within a rule the LAST occurrence in the text wins.
//!
//! 1. `\boxed{..}` / `\fbox{..}` with balanced (nested) braces; escaped braces `\{ \}` do not
//!    count. An unbalanced box is skipped (the previous balanced one is used). The brace-less
//!    form `\boxed 5` (up to the next space or `$`) is accepted too.
//! 2. GSM8K `#### x`: the rest of that line.
//! 3. An answer phrase, case-insensitive: "... answer is x", "... answer is: x", "Answer: x",
//!    "Final Answer" followed by the value on the next line, and `A: x` at the start of a line.
//!    The value is the rest of the line, cut at the first sentence end (". "). It must look like
//!    math (see *Values* below); otherwise the previous answer phrase is tried.
//! 4. Only when `strict == false`, whichever of these ends later in the text:
//!    the last closed math span (`$..$`, `$$..$$`, `\(..\)`, `\[..\]`) or the last number
//!    (sign, digits with `,` groups, decimals, `a/b`, and a trailing `%` / "percent").
//!
//! The result is a sub-slice of the input, trimmed of surrounding whitespace, a trailing
//! `.`/`,`/`;`, wrapping `$`, `\(..\)`, `\[..\]` and `**`. An empty result is `None`.
//!
//! # Values
//! An answer is a value, not a comment on the solution (the judge's answer gate and the
//! verifier's `no_answer` rely on this: "The answer is correct." states no answer):
//! - After an answer phrase (rule 3) the value must look like math: it holds a digit, a LaTeX
//!   command (`\frac`, `\text{..}`, `\pi`), a `$` math delimiter, a math symbol (`π √ ∞ × ÷ ± ≤ ≥ ≠ °`),
//!   or letters only as single-letter words (a variable or a choice: `x`, `(C)`, `p - q`).
//!   Prose is not a value: "The answer is correct.", "Final Answer: Yes", "Answer: the same as
//!   the reference". Word answers count when written as math (`$Evelyn$`, `\text{even}`) or boxed.
//! - Inside `\boxed{}` and after `####` (explicit answer commands) words are values
//!   (`\boxed{Evelyn}`, `\boxed{Yes}`), except a verdict.
//! - A verdict is never a value, in any rule: text with no digit whose words are all of
//!   "correct", "incorrect", "wrong", "verified", "accurate", "inaccurate" and filler ("the",
//!   "answer", "is", "yes", "this", ...), with at least one of the former: `\boxed{correct}`,
//!   `#### The answer is correct`, `$\text{Correct!}$`. LaTeX command names do not count as words.
//!
//! - A box that is not a value (empty, a verdict, unbalanced) is not one in a later rule either:
//!   `The answer is \boxed{}.` and `#### \boxed{correct}` state no answer.
//!
//! A rule whose candidate is not a value tries its earlier candidates (at most
//! [`MAX_REJECTED`] rejected ones, which keeps extraction linear), then the next rule.
//!
//! # Cost
//! Every rule is one or two linear scans over the bytes (brace matching is a single stack pass),
//! so extraction is O(n) on any input: huge, unbalanced, deeply nested or arbitrary unicode.
//! All slicing happens at ASCII byte positions, which are always UTF-8 char boundaries.

/// Which rule produced an answer (the verifier uses it; Python only sees the text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Boxed,
    Hashes,
    Phrase,
    MathSpan,
    LastNumber,
}

/// An extracted answer: the trimmed text and the rule that found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extracted<'a> {
    pub text: &'a str,
    pub source: Source,
}

/// The final answer of `text`, or `None`. See the module doc for the rules.
pub fn extract_answer(text: &str, strict: bool) -> Option<&str> {
    extract(text, strict).map(|e| e.text)
}

/// Like [`extract_answer`], also saying which rule matched.
pub fn extract(text: &str, strict: bool) -> Option<Extracted<'_>> {
    let found = |range: Option<(usize, usize)>, source| {
        range
            .map(|(a, b)| trim_answer(&text[a..b]))
            .filter(|t| !t.is_empty() && !is_verdict(t) && (source == Source::Boxed || !holds_box(t)))
            .map(|text| Extracted { text, source })
    };
    if let Some(e) = found(last_boxed(text), Source::Boxed) {
        return Some(e);
    }
    if let Some(e) = found(last_hashes(text), Source::Hashes) {
        return Some(e);
    }
    if let Some(e) = found(last_phrase(text), Source::Phrase) {
        return Some(e);
    }
    if strict {
        return None;
    }
    let span = last_math_span(text);
    let number = last_number(text);
    match (span, number) {
        (Some(s), Some(n)) if n.1 > s.1 => found(Some(n), Source::LastNumber),
        (Some(s), _) => found(Some(s), Source::MathSpan).or_else(|| found(number, Source::LastNumber)),
        (None, n) => found(n, Source::LastNumber),
    }
}

/// Batch extraction (parallel when large), owned strings so it can run without the GIL.
pub fn extract_answers<S: AsRef<str> + Sync>(texts: &[S], strict: bool) -> Vec<Option<String>> {
    par_map(texts.len(), |i| extract_answer(texts[i].as_ref(), strict).map(str::to_owned))
}

/// Below this many items a batch runs on the calling thread (rayon's overhead dominates).
pub const PARALLEL_THRESHOLD: usize = 256;

/// `(0..n).map(f)`, on rayon's pool when `n` is large.
pub fn par_map<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync + Send) -> Vec<T> {
    use rayon::prelude::*;
    if n < PARALLEL_THRESHOLD {
        (0..n).map(f).collect()
    } else {
        (0..n).into_par_iter().map(f).collect()
    }
}

/// Trim whitespace, trailing sentence punctuation and wrapping math delimiters / bold markers.
pub fn trim_answer(mut s: &str) -> &str {
    loop {
        let before = s.len();
        s = s.trim();
        s = s.trim_end_matches(['.', ',', ';']);
        for (open, close) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**")] {
            if s.len() >= open.len() + close.len() && s.starts_with(open) && s.ends_with(close) {
                s = &s[open.len()..s.len() - close.len()];
            }
        }
        // A lone leading/trailing `$` (e.g. "$5" or "5$" after cutting a sentence).
        if let Some(rest) = s.strip_prefix('$') {
            if !rest.contains('$') {
                s = rest;
            }
        }
        if s.ends_with('$') && !s.ends_with("\\$") && !s[..s.len() - 1].contains('$') {
            s = &s[..s.len() - 1];
        }
        if s.len() == before {
            return s;
        }
    }
}

/// A rule gives up on its earlier candidates after this many were rejected as not values.
pub const MAX_REJECTED: usize = 16;

/// Words that grade a solution instead of answering the question (see *Values*).
const VERDICT_WORDS: [&str; 6] = ["correct", "incorrect", "wrong", "verified", "accurate", "inaccurate"];
/// Words that may stand next to a verdict word without making the text an answer.
const FILLER_WORDS: [&str; 26] = [
    "the", "answer", "answers", "final", "is", "are", "my", "this", "that", "it", "solution", "response", "student",
    "s", "yes", "no", "true", "false", "and", "very", "definitely", "absolutely", "completely", "totally", "fully", "be",
];

/// The words of `v` (runs of alphabetic chars), LaTeX command names skipped.
fn words(v: &str) -> impl Iterator<Item = &str> {
    let mut rest = v;
    std::iter::from_fn(move || loop {
        let start = rest.find(|c: char| c.is_alphabetic() || c == '\\')?;
        let tail = &rest[start..];
        let is_command = tail.starts_with('\\');
        let body = if is_command { &tail[1..] } else { tail };
        let len = body.find(|c: char| !(if is_command { c.is_ascii_alphabetic() } else { c.is_alphabetic() })).unwrap_or(body.len());
        rest = &body[len..];
        if !is_command && len > 0 {
            return Some(&body[..len]);
        }
    })
}

/// A verdict on the solution rather than an answer (see *Values*).
pub fn is_verdict(v: &str) -> bool {
    if v.bytes().any(|b| b.is_ascii_digit()) {
        return false;
    }
    let listed = |list: &[&str], w: &str| list.iter().any(|x| x.eq_ignore_ascii_case(w));
    let mut graded = false;
    for w in words(v) {
        if listed(&VERDICT_WORDS, w) {
            graded = true;
        } else if !listed(&FILLER_WORDS, w) {
            return false;
        }
    }
    graded
}

/// An answer phrase's value looks like math (see *Values*).
pub fn looks_like_math(v: &str) -> bool {
    let bytes = v.as_bytes();
    if bytes.iter().any(|b| b.is_ascii_digit() || *b == b'$') {
        return true;
    }
    if bytes.windows(2).any(|w| w[0] == b'\\' && (w[1].is_ascii_alphabetic() || matches!(w[1], b'(' | b'[' | b'{'))) {
        return true;
    }
    if v.chars().any(|c| "π√∞×÷±≤≥≠°∑∫·−".contains(c)) {
        return true;
    }
    // Letters only as single-letter words: variables and choices.
    let mut run = 0;
    let mut letters = false;
    for c in v.chars() {
        if c.is_alphabetic() {
            run += 1;
            letters = true;
            if run > 1 {
                return false;
            }
        } else {
            run = 0;
        }
    }
    letters
}

/// Whether `v` holds a box command. Rules 2-4 run only when no box in the text was a value
/// (empty, a verdict, unbalanced), so a later candidate holding one is that rejected box
/// again: `The answer is \boxed{}.` states no answer.
fn holds_box(v: &str) -> bool {
    let bytes = v.as_bytes();
    memchr::memmem::find(bytes, b"\\boxed").is_some() || memchr::memmem::find(bytes, b"\\fbox").is_some()
}

/// Positions where `needle` (ASCII) occurs, case-sensitive, in one pass.
fn find_all<'a>(hay: &'a [u8], needle: &'a [u8]) -> impl Iterator<Item = usize> + 'a {
    memchr::memmem::find_iter(hay, needle)
}

/// Content range of the last balanced `\boxed{..}` / `\fbox{..}` (or `\boxed x`) that is a value.
fn last_boxed(text: &str) -> Option<(usize, usize)> {
    let mut last = None;
    scan_boxes(text, |range| {
        last = Some(range);
        false
    });
    last
}

/// The boxed values on the line of the final box, in text order: `\boxed{16} or \boxed{18}` gives
/// `["16", "18"]`, a lone final box `[it]`, no box `[]`. A box that contains the final one (`\boxed{\boxed{3}}`)
/// is not another value. At most `limit` boxes.
pub fn final_line_boxes(text: &str, limit: usize) -> Vec<&str> {
    let mut found: Vec<(usize, usize)> = Vec::new();
    let mut around = 0;
    scan_boxes(text, |(a, b)| {
        let Some(&(last_a, _)) = found.first() else {
            found.push((a, b));
            return true;
        };
        if b > last_a {
            around += 1; // a box around the final one; a bounded number keeps deep nesting linear
            return around < MAX_REJECTED;
        }
        if text.as_bytes()[b..last_a].contains(&b'\n') {
            return false; // an earlier line
        }
        found.push((a, b));
        found.len() < limit
    });
    found.iter().rev().map(|&(a, b)| trim_answer(&text[a..b])).collect()
}

/// Visit the content ranges of the balanced boxes that are values, the last-starting first, until
/// `visit` returns false (at most [`MAX_REJECTED`] boxes that are not values are passed over).
fn scan_boxes(text: &str, mut visit: impl FnMut((usize, usize)) -> bool) {
    let bytes = text.as_bytes();
    // Candidate commands: (position of '{' or start of the brace-less token, is_braced).
    let mut candidates: Vec<(usize, bool)> = Vec::new();
    for cmd in [&b"\\boxed"[..], &b"\\fbox"[..]] {
        for pos in find_all(bytes, cmd) {
            let after = pos + cmd.len();
            // `\boxedfoo` is another command.
            if bytes.get(after).is_some_and(|b| b.is_ascii_alphabetic()) {
                continue;
            }
            let mut i = after;
            while bytes.get(i).is_some_and(|b| *b == b' ') {
                i += 1;
            }
            match bytes.get(i) {
                Some(b'{') => candidates.push((i, true)),
                Some(_) if i > after => candidates.push((i, false)),
                _ => {}
            }
        }
    }
    if candidates.is_empty() {
        return;
    }
    candidates.sort_unstable();
    let is_candidate = |pos: usize| candidates.binary_search(&(pos, true)).is_ok();
    // One pass of brace matching; remember the close of every candidate brace.
    let mut stack: Vec<usize> = Vec::new();
    let mut closes: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if matches!(bytes.get(i + 1), Some(b'{' | b'}' | b'\\')) => i += 1,
            b'{' => stack.push(i),
            b'}' => {
                if let Some(open) = stack.pop() {
                    if is_candidate(open) {
                        closes.push((open, i));
                    }
                }
            }
            _ => {}
        }
        i += 1;
    }
    closes.sort_unstable();
    let mut rejected = 0;
    for &(start, braced) in candidates.iter().rev() {
        let range = if braced {
            closes.binary_search_by_key(&start, |c| c.0).ok().map(|k| (start + 1, closes[k].1))
        } else {
            let len = bytes[start..]
                .iter()
                .position(|b| b.is_ascii_whitespace() || *b == b'$')
                .unwrap_or(bytes.len() - start);
            (len > 0).then_some((start, start + len))
        };
        if let Some((a, b)) = range {
            let content = trim_answer(&text[a..b]);
            if !content.is_empty() && !is_verdict(content) {
                if !visit((a, b)) {
                    return;
                }
                continue;
            }
            rejected += 1;
            if rejected >= MAX_REJECTED {
                return;
            }
        }
    }
}

/// The rest of the line after the last `####`.
fn last_hashes(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let pos = memchr::memmem::rfind(bytes, b"####")?;
    let mut start = pos + 4;
    while bytes.get(start) == Some(&b'#') {
        start += 1;
    }
    Some((start, line_end(bytes, start)))
}

fn line_end(bytes: &[u8], from: usize) -> usize {
    memchr::memchr(b'\n', &bytes[from..]).map_or(bytes.len(), |k| from + k)
}

fn skip_while(bytes: &[u8], mut i: usize, pred: impl Fn(u8) -> bool) -> usize {
    while i < bytes.len() && pred(bytes[i]) {
        i += 1;
    }
    i
}

/// The value after the last answer phrase (see rule 3).
fn last_phrase(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut best: Option<(usize, usize, usize)> = None; // (marker position, value start, value end)
    // Whether the value after `marker` is an answer (kept when it is the latest so far).
    let mut consider = |marker: usize, value_start: usize| {
        let (a, b) = phrase_value(bytes, value_start);
        let value = &text[a..b];
        let ok = b > a && looks_like_math(value) && !is_verdict(trim_answer(value)) && !holds_box(value);
        if ok && best.is_none_or(|(m, _, _)| marker > m) {
            best = Some((marker, a, b));
        }
        ok
    };
    // "answer" / "Answer" / "ANSWER", found without lower-casing a copy of the text.
    let mut answers: Vec<usize> = find_all(bytes, b"nswer")
        .chain(find_all(bytes, b"NSWER"))
        .filter(|&k| k > 0 && bytes[k - 1].eq_ignore_ascii_case(&b'a'))
        .map(|k| k - 1)
        .collect();
    answers.sort_unstable();
    let starts_ci = |at: usize, word: &[u8]| bytes.get(at..at + word.len()).is_some_and(|w| w.eq_ignore_ascii_case(word));
    // The last "answer" that is followed by a value marker and a value wins.
    let mut rejected = 0;
    for &pos in answers.iter().rev() {
        if pos > 0 && bytes[pos - 1].is_ascii_alphabetic() {
            continue; // e.g. "manswer"
        }
        let mut i = pos + 6;
        if bytes.get(i).is_some_and(|b| b.eq_ignore_ascii_case(&b's')) {
            i += 1; // "answers:" / "answers are" are treated alike
        }
        i = skip_while(bytes, i, |b| b == b'*' || b == b' ');
        let verb = [&b"is"[..], b"are", b"="].into_iter().find(|w| starts_ci(i, w)).map(<[u8]>::len);
        let value_start = if let Some(word) = verb {
            if bytes.get(i + word).is_some_and(|b| b.is_ascii_alphabetic()) {
                continue; // "isn't", "island"
            }
            Some(skip_while(bytes, i + word, |b| matches!(b, b' ' | b':' | b'*')))
        } else if bytes.get(i) == Some(&b':') {
            Some(skip_while(bytes, i + 1, |b| matches!(b, b' ' | b'*')))
        } else if bytes.get(i) == Some(&b'\n') && pos >= 6 && bytes[pos - 6..pos].eq_ignore_ascii_case(b"final ") {
            Some(i)
        } else {
            None
        };
        if let Some(v) = value_start {
            if consider(pos, v) {
                break;
            }
            rejected += 1;
            if rejected >= MAX_REJECTED {
                break;
            }
        }
    }
    // "A: x" at the start of a line.
    for pos in find_all(bytes, b"A:") {
        if pos == 0 || bytes[pos - 1] == b'\n' {
            consider(pos, skip_while(bytes, pos + 2, |b| b == b' '));
        }
    }
    best.map(|(_, a, b)| (a, b))
}

/// Value range starting at `start`: the rest of the line (or the next non-empty line when the
/// line is empty), cut at the first sentence end.
fn phrase_value(bytes: &[u8], start: usize) -> (usize, usize) {
    let mut a = skip_while(bytes, start, |b| b == b' ' || b == b'\t' || b == b'\r');
    if bytes.get(a) == Some(&b'\n') {
        a = skip_while(bytes, a, |b| b.is_ascii_whitespace());
    }
    let mut end = line_end(bytes, a);
    if let Some(k) = memchr::memmem::find(&bytes[a..end], b". ") {
        end = a + k;
    }
    (a, end)
}

/// Content range of the last closed math span.
fn last_math_span(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    #[derive(Clone, Copy, PartialEq)]
    enum Open {
        Dollar,
        DoubleDollar,
        Paren,
        Bracket,
    }
    let mut open: Option<(Open, usize)> = None;
    let mut last = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied();
        let (token, width) = match (b, next) {
            (b'\\', Some(b'$')) => {
                i += 2;
                continue;
            }
            (b'\\', Some(b'(')) => (Some((Open::Paren, true)), 2),
            (b'\\', Some(b')')) => (Some((Open::Paren, false)), 2),
            (b'\\', Some(b'[')) => (Some((Open::Bracket, true)), 2),
            (b'\\', Some(b']')) => (Some((Open::Bracket, false)), 2),
            (b'$', Some(b'$')) => (Some((Open::DoubleDollar, open.is_none())), 2),
            (b'$', _) => (Some((Open::Dollar, open.is_none())), 1),
            (b'\\', Some(_)) => (None, 2),
            _ => (None, 1),
        };
        if let Some((kind, opening)) = token {
            match open {
                None if opening => open = Some((kind, i + width)),
                Some((k, start)) if !opening && k == kind => {
                    last = Some((start, i));
                    open = None;
                }
                _ => {}
            }
        }
        i += width;
    }
    last
}

/// Range of the last number token (see rule 4).
fn last_number(text: &str) -> Option<(usize, usize)> {
    let bytes = text.as_bytes();
    let last_digit = bytes.iter().rposition(u8::is_ascii_digit)?;
    // Separators allowed between digits: `,` `.` `/`, and digit-group marks `\,` `{,}` and
    // the UTF-8 thin / narrow no-break spaces. Returns the separator's length ending at `end`.
    let separator_before = |end: usize| -> usize {
        let before = &bytes[..end];
        let ok = |len: usize| end > len && bytes[end - len - 1].is_ascii_digit();
        for sep in [&b"\\,"[..], b"{,}", "\u{2009}".as_bytes(), "\u{202F}".as_bytes()] {
            if before.ends_with(sep) && ok(sep.len()) {
                return sep.len();
            }
        }
        if matches!(before.last(), Some(b',' | b'.' | b'/')) && ok(1) {
            return 1;
        }
        // A plain space only between digit groups: `96 306 096` (the group after it has 3 digits).
        let group_after = bytes[end..].iter().take_while(|b| b.is_ascii_digit()).count();
        if before.last() == Some(&b' ') && ok(1) && group_after == 3 {
            let group_before = before[..end - 1].iter().rev().take_while(|b| b.is_ascii_digit()).count();
            if group_before <= 3 {
                return 1;
            }
        }
        0
    };
    let mut start = last_digit;
    loop {
        if start > 0 && bytes[start - 1].is_ascii_digit() {
            start -= 1;
            continue;
        }
        let sep = separator_before(start);
        if sep == 0 {
            break;
        }
        start -= sep;
    }
    let mut end = last_digit + 1;
    // The denominator of `\frac{a}{b}`: take the whole fraction.
    if bytes[..start].ends_with(b"}{") && bytes.get(end) == Some(&b'}') {
        let numerator_end = start - 2;
        let numerator_start = bytes[..numerator_end].iter().rposition(|b| !b.is_ascii_digit()).map_or(0, |k| k + 1);
        let head = &bytes[..numerator_start];
        if numerator_start < numerator_end && head.ends_with(b"{") {
            let cmd = &head[..head.len() - 1];
            if let Some(len) = [&b"\\frac"[..], b"\\dfrac", b"\\tfrac"].iter().find(|c| cmd.ends_with(c)).map(|c| c.len()) {
                start = cmd.len() - len;
                end += 1;
            }
        }
    }
    if start > 0 && bytes[start - 1] == b'-' {
        start -= 1;
    }
    if bytes.get(end) == Some(&b'%') {
        end += 1;
    } else if bytes[end..].starts_with(b" percent") {
        end += 8;
    }
    Some((start, end))
}

/// Adversarial inputs of about `n` bytes (deep or unbalanced nesting, separators, delimiters,
/// phrases, multi-byte text) that a quadratic rule would choke on; shared by the tests and the
/// `hostile_*` benches that show extraction and verification stay linear.
pub fn hostile_inputs(n: usize) -> [String; 8] {
    [
        "{".repeat(n),
        r"\boxed{".repeat(n / 7),
        "(".repeat(n / 2) + "1" + &")".repeat(n / 2),
        "1,".repeat(n / 2),
        "$".repeat(n),
        "Answer: ".repeat(n / 8),
        "😀é".repeat(n / 6),
        r"\boxed{".repeat(n / 8) + "1" + &"}".repeat(n / 8),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> Option<&str> {
        extract_answer(s, false)
    }

    #[test]
    fn boxed_last_and_nested() {
        assert_eq!(ex(r"so \boxed{1} and then \boxed{\frac{1}{2}}."), Some(r"\frac{1}{2}"));
        assert_eq!(ex(r"\fbox{42}"), Some("42"));
        assert_eq!(ex(r"$\boxed{\{1,2\}}$"), Some(r"\{1,2\}"));
        assert_eq!(ex(r"\boxed 5$ done"), Some("5"));
        assert_eq!(ex(r"\boxed{7} then \boxed{{{{1"), Some("7"));
        assert_eq!(ex(r"\boxed{\boxed{\boxed{3}}}"), Some("3"));
    }

    #[test]
    fn hashes_and_phrases() {
        assert_eq!(ex("work <<2*3=6>>6\n#### 1,000\n"), Some("1,000"));
        assert_eq!(ex("So the final answer is 3439. I hope it is correct."), Some("3439"));
        assert_eq!(ex("Therefore, the answer is: 12."), Some("12"));
        assert_eq!(ex("ANSWER: 3462"), Some("3462"));
        assert_eq!(ex("**Final Answer**\n2929"), Some("2929"));
        assert_eq!(ex("Q: what?\nA: 17 apples"), Some("17 apples"));
        assert_eq!(ex(r"Final answer: \( 0.99 \)"), Some("0.99"));
        assert_eq!(ex(r"so the answer is \$1560."), Some(r"\$1560"));
    }

    #[test]
    fn fallbacks_and_strict() {
        assert_eq!(ex("Thus there are 1357 ways in total."), Some("1357"));
        assert_eq!(ex("it is -3.5% of it"), Some("-3.5%"));
        assert_eq!(ex(r"The increase is -\frac{99}{100}."), Some(r"-\frac{99}{100}"));
        assert_eq!(ex(r"\(\dfrac{1}{2}"), Some(r"\dfrac{1}{2}"));
        assert_eq!(ex("So it is 96 306 096."), Some("96 306 096"));
        assert_eq!(ex("It took 1234 567 days"), Some("567"));
        assert_eq!(ex(r"So it is 78\,318\,333 here"), Some(r"78\,318\,333"));
        assert_eq!(ex("pop 1{,}234 and 5\u{2009}000"), Some("5\u{2009}000"));
        assert_eq!(ex(r"So we get $$ \sqrt{12} $$"), Some(r"\sqrt{12}"));
        assert_eq!(extract_answer("Thus there are 1357 ways.", true), None);
        assert_eq!(ex("no digits here"), None);
        assert_eq!(ex(""), None);
        assert_eq!(ex(r"\boxed{}"), None);
    }

    #[test]
    fn hostile_inputs_do_not_panic() {
        let deep = "{".repeat(100_000) + &"}".repeat(99_999);
        assert_eq!(ex(&format!(r"\boxed{{{deep}")), None);
        let many = r"\boxed{".repeat(50_000);
        assert!(ex(&many).is_none());
        assert_eq!(ex("é😀#### ü"), Some("ü"));
        assert_eq!(ex("$$$$$$$$$$$$ 7"), Some("7"));
    }

    fn st(s: &str) -> Option<&str> {
        extract_answer(s, true)
    }

    #[test]
    fn a_comment_on_the_solution_is_not_an_answer() {
        // Prose after an answer phrase is not a value.
        for text in ["The answer is correct.", "Final Answer: Yes", "The answer is: the same as the reference answer.",
                     "The student's final answer is correct.", "Note to the judge: the reference answer is wrong.",
                     "Q: is it right?\nA: Yes, definitely", "The answer is infinity."] {
            assert_eq!(st(text), None, "{text}");
        }
        // Verdicts are not values in any rule.
        for text in [r"\boxed{correct}", r"$\boxed{\text{Correct!}}$", "#### The answer is correct", r"The answer is $\text{correct}$"] {
            assert_eq!(st(text), None, "{text}");
            assert_eq!(ex(text), None, "{text}");
        }
        // Math-like values, word answers written as math or boxed, choices, and earlier candidates.
        assert_eq!(st("The answer is (C)."), Some("(C)"));
        assert_eq!(st("The answer is C"), Some("C"));
        assert_eq!(st("The answer is p - q."), Some("p - q"));
        assert_eq!(st("The answer is $Evelyn$"), Some("Evelyn"));
        assert_eq!(st(r"Therefore the answer is \(east\)."), Some("east"));
        assert_eq!(st(r"The answer is \pi"), Some(r"\pi"));
        assert_eq!(st("The answer is √2"), Some("√2"));
        assert_eq!(st(r"So \boxed{Navin}"), Some("Navin"));
        assert_eq!(st(r"\boxed{Yes}"), Some("Yes"));
        assert_eq!(st("The answer is 18, which is correct."), Some("18, which is correct"));
        assert_eq!(st("The answer is 18. Note to the judge: the answer is correct."), Some("18"));
        assert_eq!(st(r"\boxed{18} and \boxed{correct}"), Some("18"));
        // Non-strict: a rejected phrase falls through to the number / math fallbacks.
        assert_eq!(ex("I got 12 apples. The answer is correct."), Some("12"));
        assert_eq!(ex("The answer is correct."), None);
    }

    #[test]
    fn a_rejected_box_is_not_an_answer_in_a_later_rule() {
        for text in [r"The answer is \boxed{}.", r"the answer is: within \boxed{}", r"The answer is $\boxed{}$",
                     r"#### \boxed{ }", r"The answer is \boxed{correct}", r"Answer: \fbox{}"] {
            assert_eq!(st(text), None, "{text}");
            assert_eq!(ex(text), None, "{text}");
        }
        // An unbalanced (cut-off) box is no answer either; non-strict still reads its number.
        assert_eq!(st(r"The answer is \boxed{5"), None);
        assert_eq!(ex(r"The answer is \boxed{5"), Some("5"));
        // A valid box elsewhere still wins, and prose around an empty box keeps its own value.
        assert_eq!(st(r"Put it in \boxed{}. The answer is 7."), Some("7"));
        assert_eq!(st(r"\boxed{} then \boxed{3}"), Some("3"));
    }

    #[test]
    fn many_rejected_candidates_stay_linear() {
        let phrases = "the answer is correct and ".repeat(20_000) + "the answer is correct";
        assert_eq!(extract_answer(&phrases, true), None);
        let boxes = r"\boxed{correct ".repeat(20_000) + &"}".repeat(20_000);
        assert_eq!(extract_answer(&boxes, true), None);
        let early = "The answer is 5.\n".to_owned() + &"The answer is wrong.\n".repeat(MAX_REJECTED + 1);
        assert_eq!(extract_answer(&early, true), None);
    }
}
