//! Finding secrets in strings: the built-in detectors and the configured `blocked_values`,
//! and what to put in place of what was found.
//!
//! Almost every value holds no secret, so the cost that matters is deciding that. One
//! vectorised pass over a value's bytes ([`Signs::of`]) notes, for every detector, the
//! smallest thing its matches must contain: the triples `sk-`, `AKI`/`ASI`, `eyJ` and
//! `rer`/`RER` (of `Bearer`), an `@`, 13 digits, a `.` between digits, a `:` between hex
//! digits. Only a value showing a detector's sign is searched with that detector's regex.
//! (One `RegexSet` of every detector was measured at a third of the speed: patterns such as
//! the e-mail one have no literal to skip ahead with, so its automaton walks every byte; a
//! separate SIMD search per gate costs more in call setup than in scanning on the short
//! strings most attributes hold.) The configured `blocked_values` are one `RegexSet`: one
//! pass over the value for all of them, run only on values as long as their shortest match
//! and holding a literal their matches start with ([`BlockedGate`]).
//!
//! Some detectors' regexes only find candidates, which a check then confirms: a credit card
//! number must pass the Luhn check, an IPv6 candidate must parse as an address. Values are
//! often JSON (chat messages), where a secret may follow an escape such as `\n`: the checks
//! treat an escape as a separator, and a match never starts inside one, so masking keeps the
//! JSON well-formed.

use hmac::{Hmac, Mac};
use regex::{Regex, RegexSet};
use serde::Deserialize;
use sha2::Sha256;

/// A built-in detector, switched on by naming it in `detectors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// OpenAI (`sk-…`, `sk-proj-…`) and Anthropic (`sk-ant-…`) API keys.
    ApiKey,
    /// AWS access key ids (`AKIA…`, `ASIA…`).
    AwsKey,
    /// The token of `Bearer <token>`.
    Bearer,
    /// JSON Web Tokens (`eyJ….….…`).
    Jwt,
    /// E-mail addresses.
    Email,
    /// Payment card numbers of 13 to 19 digits (spaces or dashes allowed) passing the Luhn check.
    CreditCard,
    /// IPv4 and IPv6 addresses.
    Ip,
}

impl Detector {
    /// Every detector, in the order they are documented.
    pub const ALL: [Detector; 7] = [
        Detector::ApiKey,
        Detector::AwsKey,
        Detector::Bearer,
        Detector::Jwt,
        Detector::Email,
        Detector::CreditCard,
        Detector::Ip,
    ];

    /// The name used in config and in metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Detector::ApiKey => "api_key",
            Detector::AwsKey => "aws_key",
            Detector::Bearer => "bearer",
            Detector::Jwt => "jwt",
            Detector::Email => "email",
            Detector::CreditCard => "credit_card",
            Detector::Ip => "ip",
        }
    }

    /// The detector's regexes, the check confirming each candidate, and the gate a value must
    /// pass before the regex is run on it.
    fn patterns(self) -> &'static [(&'static str, Check, Gate)] {
        match self {
            // The body must hold a digit: prose such as "task-specific-instruction-tuning"
            // has the shape but no digits, real keys always have some.
            Detector::ApiKey => &[(
                "sk-(?:ant-|proj-)?[A-Za-z0-9_-]{20,}",
                Check::ApiKey,
                Gate::Sign(Signs::SK),
            )],
            Detector::AwsKey => &[(
                "(?:AKIA|ASIA)[0-9A-Z]{16}",
                Check::WordBounded,
                Gate::Sign(Signs::AKIA_ASIA),
            )],
            Detector::Bearer => &[(
                "(?:[Bb]earer|BEARER)[ \t]+([A-Za-z0-9._~+/=-]{8,})",
                Check::BearerToken,
                Gate::Sign(Signs::RER),
            )],
            Detector::Jwt => &[(
                "eyJ[A-Za-z0-9_-]{8,}\\.[A-Za-z0-9_-]{8,}\\.[A-Za-z0-9_-]*",
                Check::WordBounded,
                Gate::Sign(Signs::EYJ),
            )],
            Detector::Email => &[(
                "[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\\.[A-Za-z0-9-]+)*\\.[A-Za-z]{2,}",
                Check::None,
                Gate::Sign(Signs::AT),
            )],
            // Maximal runs of at least 13 digits with single spaces or dashes between them;
            // the check finds the card numbers among them.
            Detector::CreditCard => &[("[0-9](?:[ -]?[0-9]){12,}", Check::Luhn, Gate::Digits(13))],
            Detector::Ip => &[
                // Found by hand from the dots (see `find_ipv4`).
                ("", Check::Ipv4, Gate::Sign(Signs::DIGIT_DOT_DIGIT)),
                (
                    "(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}|(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?::(?:[0-9A-Fa-f]{1,4}(?::[0-9A-Fa-f]{1,4})*)?",
                    Check::Ipv6,
                    Gate::Sign(Signs::HEX_COLON),
                ),
            ],
        }
    }
}

/// What a value must hold for a pattern to be worth running on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    /// Always run (the `blocked_values`, which have their own `RegexSet` as a gate).
    None,
    /// This sign (one of the [`Signs`] bits): something every match contains.
    Sign(u8),
    /// At least this many ASCII digits.
    Digits(usize),
}

/// Windows of three bytes [`Signs::of`] reads per block: one AVX2 vector of bytes.
const LANES: usize = 32;

/// What one pass over a value found: which detectors could match in it. Each bit is a
/// substring every match of a detector contains, so a value without it is skipped safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Signs {
    bits: u8,
    digits: usize,
}

impl Signs {
    /// `sk-` (API keys).
    const SK: u8 = 1;
    /// `AKI` or `ASI` (AWS access key ids start with `AKIA` or `ASIA`).
    const AKIA_ASIA: u8 = 1 << 1;
    /// `rer` or `RER` (in `Bearer`, `bearer`, `BEARER`).
    const RER: u8 = 1 << 2;
    /// `eyJ` (JWTs).
    const EYJ: u8 = 1 << 3;
    /// `@` (e-mail addresses).
    const AT: u8 = 1 << 4;
    /// A digit, a dot and a digit (IPv4 addresses).
    const DIGIT_DOT_DIGIT: u8 = 1 << 5;
    /// A colon with a hex digit or colon on both sides, the start of the value counting as
    /// one (`db8::1`, `::1`): an IPv6 address holds one, JSON's `"key":"value"` does not.
    /// (What is counted as a hex digit here is a little wider, see [`Signs::of`].)
    const HEX_COLON: u8 = 1 << 6;

    /// Reads the signs of `bytes` in blocks of [`LANES`] windows of three bytes, each block
    /// one branch-free loop of fixed length that the compiler turns into straight-line vector
    /// code. The last, partial block is copied into a zero-padded buffer rather than run
    /// byte by byte: a zero byte is part of no sign, and a scalar tail (every value under 34
    /// bytes, and up to 33 bytes of every longer one) cost more than all the vector blocks of
    /// a typical span together. With AVX2 (on every x86-64 server of the last decade) a block
    /// is one 32-byte vector per compare instead of two 16-byte ones.
    fn of(bytes: &[u8]) -> Signs {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above; `of_avx2` is the portable
            // code compiled for it and has no other requirement.
            return unsafe { Signs::of_avx2(bytes) };
        }
        Signs::of_portable(bytes)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn of_avx2(bytes: &[u8]) -> Signs {
        Signs::of_portable(bytes)
    }

    #[inline(always)]
    fn of_portable(bytes: &[u8]) -> Signs {
        // Per lane: the sign bits seen and the digits counted. Lane counters are `u8` (wider
        // ones halve the lanes per vector) and are emptied into `digits` before they can
        // overflow, every 255 blocks.
        let mut lane_bits = [0u8; LANES];
        let mut lane_digits = [0u8; LANES];
        let mut digits = 0;
        let mut blocks = 0u8;
        let n = bytes.len();
        let mut at = 0;
        while at < n {
            match bytes.get(at..at + LANES + 2) {
                Some(window) => {
                    let window: &[u8; LANES + 2] =
                        window.try_into().expect("the slice is LANES + 2 long");
                    Signs::block(window, &mut lane_bits, &mut lane_digits);
                }
                None => {
                    let mut padded = [0u8; LANES + 2];
                    padded[..n - at].copy_from_slice(&bytes[at..]);
                    Signs::block(&padded, &mut lane_bits, &mut lane_digits);
                }
            }
            at += LANES;
            blocks += 1;
            if blocks == u8::MAX {
                digits += Signs::sum_lanes(&lane_digits);
                lane_digits = [0; LANES];
                blocks = 0;
            }
        }
        digits += Signs::sum_lanes(&lane_digits);
        let mut bits = Signs::or_lanes(&lane_bits);
        // A colon opening the value (`::1`) has the start of the value on its left.
        if n >= 2 && bytes[0] == b':' && Signs::hexish(bytes[1]) {
            bits |= Signs::HEX_COLON;
        }
        Signs { bits, digits }
    }

    /// The signs of the [`LANES`] windows starting in the first `LANES` bytes of `window`,
    /// and the digits and `@` among those bytes. `&` and `|` on `bool`s rather than `&&` and
    /// `||`, so that every condition is a lane-wise compare and no branch stops the
    /// vectorisation.
    #[inline(always)]
    fn block(window: &[u8; LANES + 2], lane_bits: &mut [u8; LANES], lane_digits: &mut [u8; LANES]) {
        let digit = |b: u8| b.wrapping_sub(b'0') < 10;
        for i in 0..LANES {
            let (a, b, c) = (window[i], window[i + 1], window[i + 2]);
            let sk = (a == b's') & (b == b'k') & (c == b'-');
            let akia = (a == b'A') & ((b == b'K') | (b == b'S')) & (c == b'I');
            let rer =
                (((a == b'r') & (c == b'r')) | ((a == b'R') & (c == b'R'))) & ((b | 0x20) == b'e');
            let eyj = (a == b'e') & (b == b'y') & (c == b'J');
            let at = a == b'@';
            let dot = digit(a) & (b == b'.') & digit(c);
            let colon = Signs::hexish(a) & (b == b':') & Signs::hexish(c);
            lane_bits[i] |= (u8::from(sk) * Signs::SK)
                | (u8::from(akia) * Signs::AKIA_ASIA)
                | (u8::from(rer) * Signs::RER)
                | (u8::from(eyj) * Signs::EYJ)
                | (u8::from(at) * Signs::AT)
                | (u8::from(dot) * Signs::DIGIT_DOT_DIGIT)
                | (u8::from(colon) * Signs::HEX_COLON);
            lane_digits[i] += u8::from(digit(a));
        }
    }

    /// The lanes eight at a time in a `u64`: summing or or-ing them byte by byte compiled to
    /// a chain of extracts and widenings that cost as much as a block.
    #[inline(always)]
    fn words(lanes: &[u8; LANES]) -> impl Iterator<Item = u64> + '_ {
        lanes
            .chunks_exact(8)
            .map(|word| u64::from_le_bytes(word.try_into().expect("chunks of 8 bytes")))
    }

    #[inline(always)]
    fn or_lanes(lanes: &[u8; LANES]) -> u8 {
        let mut word = Signs::words(lanes).fold(0, |all, word| all | word);
        word |= word >> 32;
        word |= word >> 16;
        word |= word >> 8;
        word as u8
    }

    /// Each word's bytes added in pairs into 16-bit lanes (at most 510 each), then the four
    /// lanes added by one multiplication into the top 16 bits (at most 2,040).
    #[inline(always)]
    fn sum_lanes(lanes: &[u8; LANES]) -> usize {
        const LOW_BYTES: u64 = 0x00ff_00ff_00ff_00ff;
        Signs::words(lanes)
            .map(|word| {
                let pairs = (word & LOW_BYTES) + ((word >> 8) & LOW_BYTES);
                (pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48) as usize
            })
            .sum()
    }

    /// `0`..=`f` holds the digits, `:`, `A`-`F` and `a`-`f` (and some punctuation and
    /// letters: a wider gate, never a narrower one) in one compare. A zero byte is outside it.
    #[inline(always)]
    fn hexish(b: u8) -> bool {
        b.wrapping_sub(b'0') <= b'f' - b'0'
    }

    fn open(self, gate: Gate) -> bool {
        match gate {
            Gate::None => true,
            Gate::Sign(bit) => self.bits & bit != 0,
            Gate::Digits(min) => self.digits >= min,
        }
    }
}

/// How a pattern's match is confirmed, and which part of it is the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    /// Every match is a secret (a configured `blocked_values` pattern, e-mail addresses).
    None,
    /// Not inside a longer word.
    WordBounded,
    ApiKey,
    /// The secret is capture group 1, the token after `Bearer`.
    BearerToken,
    Luhn,
    Ipv4,
    Ipv6,
}

/// One secret found in a string: its byte range and the rule that found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub start: usize,
    pub end: usize,
    /// Index into [`Scanner::rule_names`].
    pub rule: usize,
}

struct Pattern {
    /// `None` for the IPv4 detector, found by hand.
    regex: Option<Regex>,
    check: Check,
    gate: Gate,
    rule: usize,
}

/// What goes in place of a secret.
#[derive(Clone)]
pub enum Replacement {
    /// A fixed `****`, as the Collector's redaction processor.
    Mask,
    /// The lowercase hex HMAC-SHA256 of the secret, keyed with `hash_key`: the same secret
    /// always gives the same text, so values stay joinable without being recoverable.
    Hash(Hmac<Sha256>),
}

/// The text a masked secret is replaced with.
pub const MASK: &str = "****";

impl Replacement {
    /// A keyed hash replacement; any key length is accepted by HMAC.
    pub fn hash(key: &[u8]) -> Replacement {
        Replacement::Hash(
            Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length"),
        )
    }

    fn push(&self, secret: &str, out: &mut String) {
        match self {
            Replacement::Mask => out.push_str(MASK),
            Replacement::Hash(keyed) => {
                let mut mac = keyed.clone();
                mac.update(secret.as_bytes());
                // By hand: `hex::encode` collects `char`s one by one into a new `String`.
                const DIGITS: &[u8; 16] = b"0123456789abcdef";
                for byte in mac.finalize().into_bytes() {
                    out.push(char::from(DIGITS[usize::from(byte >> 4)]));
                    out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
                }
            }
        }
    }
}

/// A pattern that could not be compiled: which one (by index in `blocked_values` or
/// `allowed_values`) and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PatternError {
    pub index: usize,
    pub message: String,
}

/// The compiled value rules of one `redaction` processor.
pub struct Scanner {
    /// The enabled detectors' patterns.
    detectors: Vec<Pattern>,
    /// The configured `blocked_values`: `blocked_set` finds which of `blocked` match, on the
    /// values `blocked_gate` lets through.
    blocked_set: Option<RegexSet>,
    blocked_gate: BlockedGate,
    blocked: Vec<Pattern>,
    /// Matches of these are left alone even when a rule matches inside them.
    allowed: Vec<Regex>,
    allowed_set: Option<RegexSet>,
    rule_names: Vec<&'static str>,
}

/// The rule name of the configured `blocked_values` patterns.
pub const BLOCKED_VALUES: &str = "blocked_values";

impl Scanner {
    /// Compiles the detectors and patterns. Errors name the pattern that failed.
    pub fn new(
        detectors: &[Detector],
        blocked_values: &[String],
        allowed_values: &[String],
    ) -> Result<Scanner, ScannerError> {
        let mut rule_names = Vec::new();
        let mut patterns = Vec::new();
        for detector in detectors {
            if rule_names.contains(&detector.name()) {
                continue;
            }
            let rule = rule_names.len();
            rule_names.push(detector.name());
            for &(source, check, gate) in detector.patterns() {
                patterns.push(Pattern {
                    regex: (!source.is_empty())
                        .then(|| Regex::new(source).expect("the built-in patterns are valid")),
                    check,
                    gate,
                    rule,
                });
            }
        }
        let mut blocked = Vec::new();
        let blocked_set = if blocked_values.is_empty() {
            None
        } else {
            let rule = rule_names.len();
            rule_names.push(BLOCKED_VALUES);
            for (index, source) in blocked_values.iter().enumerate() {
                let regex = compile(source)
                    .map_err(|message| ScannerError::Blocked(PatternError { index, message }))?;
                blocked.push(Pattern {
                    regex: Some(regex),
                    check: Check::None,
                    gate: Gate::None,
                    rule,
                });
            }
            Some(RegexSet::new(blocked_values).map_err(|e| {
                // Each pattern compiled alone, so only the combined size can be the problem.
                ScannerError::Blocked(PatternError {
                    index: 0,
                    message: format!("the patterns together are too large to compile: {e}"),
                })
            })?)
        };
        let mut allowed = Vec::new();
        for (index, source) in allowed_values.iter().enumerate() {
            allowed.push(
                compile(source)
                    .map_err(|message| ScannerError::Allowed(PatternError { index, message }))?,
            );
        }
        let allowed_set = if allowed_values.is_empty() {
            None
        } else {
            Some(RegexSet::new(allowed_values).map_err(|e| {
                ScannerError::Allowed(PatternError {
                    index: 0,
                    message: format!("the patterns together are too large to compile: {e}"),
                })
            })?)
        };
        Ok(Scanner {
            detectors: patterns,
            blocked_set,
            blocked_gate: BlockedGate::new(blocked_values),
            blocked,
            allowed,
            allowed_set,
            rule_names,
        })
    }

    /// The names of the rules hits refer to: detector names and `blocked_values`.
    pub fn rule_names(&self) -> &[&'static str] {
        &self.rule_names
    }

    /// Finds the secrets in `text`, in order and without overlaps, into `hits` (cleared
    /// first). Returns whether there are any. Allocates nothing when nothing matches.
    pub fn scan(&self, text: &str, hits: &mut Vec<Hit>) -> bool {
        hits.clear();
        if !self.detectors.is_empty() {
            let signs = Signs::of(text.as_bytes());
            for pattern in &self.detectors {
                if signs.open(pattern.gate) {
                    find(pattern, text, hits);
                }
            }
        }
        if let Some(set) = &self.blocked_set
            && self.blocked_gate.may_match(text)
            && set.is_match(text)
        {
            for index in set.matches(text).iter() {
                find(&self.blocked[index], text, hits);
            }
        }
        if hits.is_empty() {
            return false;
        }
        if let Some(allowed_set) = &self.allowed_set
            && allowed_set.is_match(text)
        {
            let allowed: Vec<(usize, usize)> = self
                .allowed
                .iter()
                .flat_map(|regex| regex.find_iter(text).map(|m| (m.start(), m.end())))
                .collect();
            hits.retain(|hit| {
                !allowed
                    .iter()
                    .any(|&(start, end)| start <= hit.start && hit.end <= end)
            });
        }
        hits.sort_unstable_by_key(|hit| (hit.start, std::cmp::Reverse(hit.end)));
        // Merge overlapping hits; the merged one keeps the rule of the one starting first.
        let mut merged = 0;
        for i in 0..hits.len() {
            let hit = hits[i];
            if merged > 0 && hit.start < hits[merged - 1].end {
                let last = &mut hits[merged - 1];
                last.end = last.end.max(hit.end);
            } else {
                hits[merged] = hit;
                merged += 1;
            }
        }
        hits.truncate(merged);
        !hits.is_empty()
    }

    /// `text` with each of `hits` (from [`Scanner::scan`] on the same text) replaced.
    pub fn replace(text: &str, hits: &[Hit], replacement: &Replacement) -> String {
        let mut out = String::with_capacity(text.len() + hits.len() * 64);
        let mut at = 0;
        for hit in hits {
            out.push_str(&text[at..hit.start]);
            replacement.push(&text[hit.start..hit.end], &mut out);
            at = hit.end;
        }
        out.push_str(&text[at..]);
        out
    }
}

/// Decides before the `blocked_values` set runs whether a value could hold a match at all:
/// most values are too short for any pattern, or lack every literal a match must start with.
/// Both are read from the patterns' syntax, so the gate is never narrower than the set.
struct BlockedGate {
    /// No match of any pattern is shorter than this many bytes.
    min_len: usize,
    /// Every match of every pattern starts with one of these. `None` when some pattern has
    /// no such literals (`[a-z]+@x`, `.*secret`), or too many to search for one by one:
    /// then the set runs on every value of at least `min_len` bytes.
    prefixes: Option<Vec<memchr::memmem::Finder<'static>>>,
}

/// More required prefixes than this and searching for each costs more than the set's own
/// prefilter, which finds them all in one pass.
const MAX_BLOCKED_PREFIXES: usize = 8;

impl BlockedGate {
    fn new(sources: &[String]) -> BlockedGate {
        let always = BlockedGate {
            min_len: 0,
            prefixes: None,
        };
        let mut min_len = usize::MAX;
        let mut prefixes: Option<Vec<Vec<u8>>> = Some(Vec::new());
        for source in sources {
            // The same syntax and defaults as the `regex` crate compiling the set; a pattern
            // it cannot read (none: each was compiled already) disables the gate.
            let Ok(hir) = regex_syntax::parse(source) else {
                return always;
            };
            // `None`: the pattern matches nothing, so it widens nothing.
            let Some(pattern_min) = hir.properties().minimum_len() else {
                continue;
            };
            min_len = min_len.min(pattern_min);
            let mut seq = regex_syntax::hir::literal::Extractor::new().extract(&hir);
            // May shorten literals (each still starts every match) or give up on them.
            seq.optimize_for_prefix_by_preference();
            match (seq.literals(), &mut prefixes) {
                (Some(literals), Some(all)) if literals.iter().all(|l| !l.is_empty()) => {
                    for literal in literals {
                        if !all.iter().any(|known| known == literal.as_bytes()) {
                            all.push(literal.as_bytes().to_vec());
                        }
                    }
                }
                _ => prefixes = None,
            }
        }
        BlockedGate {
            min_len,
            prefixes: prefixes
                .filter(|all| all.len() <= MAX_BLOCKED_PREFIXES)
                .map(|all| {
                    all.iter()
                        .map(|literal| memchr::memmem::Finder::new(literal).into_owned())
                        .collect()
                }),
        }
    }

    fn may_match(&self, text: &str) -> bool {
        text.len() >= self.min_len
            && self.prefixes.as_ref().is_none_or(|prefixes| {
                prefixes
                    .iter()
                    .any(|finder| finder.find(text.as_bytes()).is_some())
            })
    }
}

/// Why the value rules could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScannerError {
    #[error("blocked_values[{}]: {}", .0.index, .0.message)]
    Blocked(PatternError),
    #[error("allowed_values[{}]: {}", .0.index, .0.message)]
    Allowed(PatternError),
}

/// Compiles a configured pattern, refusing ones that match the empty string: masking their
/// empty matches would put a mask between every two characters.
pub fn compile(source: &str) -> Result<Regex, String> {
    let regex = Regex::new(source).map_err(|e| format!("invalid regular expression: {e}"))?;
    if regex.is_match("") {
        return Err(format!(
            "the pattern {source:?} matches the empty string, so it would match everywhere"
        ));
    }
    Ok(regex)
}

/// Adds the confirmed matches of `pattern` in `text` to `hits`.
fn find(pattern: &Pattern, text: &str, hits: &mut Vec<Hit>) {
    let rule = pattern.rule;
    let mut push = |start: usize, end: usize| {
        let start = past_escape(text, start);
        if start < end {
            hits.push(Hit { start, end, rule });
        }
    };
    let Some(regex) = &pattern.regex else {
        find_ipv4(text, &mut push);
        return;
    };
    match pattern.check {
        Check::BearerToken => {
            for captures in regex.captures_iter(text) {
                if let Some(token) = captures.get(1)
                    && !is_word_byte(next_byte(text, token.end()))
                {
                    push(token.start(), token.end());
                }
            }
        }
        Check::Luhn => {
            for m in regex.find_iter(text) {
                find_cards(text, m.start(), m.end(), &mut push);
            }
        }
        check => {
            for m in regex.find_iter(text) {
                let (start, end) = (m.start(), m.end());
                let confirmed = match check {
                    Check::None => true,
                    Check::WordBounded => {
                        !is_word_byte(prev_byte(text, start)) && !is_word_byte(next_byte(text, end))
                    }
                    Check::ApiKey => {
                        !is_word_byte(prev_byte(text, start))
                            && text[start + 3..end].bytes().any(|b| b.is_ascii_digit())
                    }
                    Check::Ipv4 => is_ipv4(text, start, end),
                    Check::Ipv6 => is_ipv6(text, start, end),
                    Check::BearerToken | Check::Luhn => unreachable!("handled above"),
                };
                if confirmed {
                    push(start, end);
                }
            }
        }
    }
}

/// Finds dotted-quad IPv4 addresses from the dots between digits: four dot-separated numbers
/// of one to three digits up to 255, not part of a longer dotted number.
fn find_ipv4(text: &str, push: &mut impl FnMut(usize, usize)) {
    let bytes = text.as_bytes();
    let mut searched_to = 0;
    for dot in memchr::memchr_iter(b'.', bytes) {
        if dot < searched_to
            || dot == 0
            || !bytes[dot - 1].is_ascii_digit()
            || !bytes.get(dot + 1).is_some_and(u8::is_ascii_digit)
        {
            continue;
        }
        let start = bytes[..dot]
            .iter()
            .rposition(|b| !b.is_ascii_digit())
            .map_or(0, |i| i + 1);
        if dot - start > 3 {
            continue;
        }
        if let Some(end) = dotted_quad_end(bytes, start)
            && is_ipv4(text, start, end)
        {
            push(start, end);
            searched_to = end;
        }
    }
}

/// Where the dotted quad starting at `start` ends, if one does.
fn dotted_quad_end(bytes: &[u8], start: usize) -> Option<usize> {
    let mut at = start;
    for octet in 0..4 {
        if octet > 0 {
            if bytes.get(at) != Some(&b'.') {
                return None;
            }
            at += 1;
        }
        let digits = bytes[at..]
            .iter()
            .take(4)
            .take_while(|b| b.is_ascii_digit())
            .count();
        if !(1..=3).contains(&digits) {
            return None;
        }
        let value: u32 = bytes[at..at + digits]
            .iter()
            .fold(0, |v, b| v * 10 + u32::from(b - b'0'));
        if value > 255 {
            return None;
        }
        at += digits;
    }
    Some(at)
}

/// The byte before `at`, with a JSON escape (`\n`, `\"`, `\u00e9`) read as a separator: in a
/// JSON-carrying value the letter of an escape is not part of the word that follows it.
fn prev_byte(text: &str, at: usize) -> Option<u8> {
    let bytes = text.as_bytes();
    if at == 0 {
        return None;
    }
    if is_escaped(bytes, at - 1) {
        return Some(b' ');
    }
    // The last hex digit of a `\uXXXX` escape.
    if at >= 6 && bytes[at - 5] == b'u' && is_escaped(bytes, at - 5) {
        return Some(b' ');
    }
    Some(bytes[at - 1])
}

fn next_byte(text: &str, at: usize) -> Option<u8> {
    text.as_bytes().get(at).copied()
}

/// Whether the byte at `index` follows a backslash that is itself not escaped.
fn is_escaped(bytes: &[u8], index: usize) -> bool {
    let backslashes = bytes[..index]
        .iter()
        .rev()
        .take_while(|&&b| b == b'\\')
        .count();
    backslashes % 2 == 1
}

/// Moves a match start out of a JSON escape (`\nalice@…` starts at `alice`, `\u00e94111…`
/// at `4111…`), so that replacing it never breaks the escape.
fn past_escape(text: &str, start: usize) -> usize {
    let bytes = text.as_bytes();
    // Inside `\uXXXX`: the `u` is at most 4 bytes back.
    for back in 0..=4.min(start) {
        let u = start - back;
        if bytes.get(u) == Some(&b'u')
            && is_escaped(bytes, u)
            && bytes.len() >= u + 5
            && bytes[u + 1..u + 5].iter().all(u8::is_ascii_hexdigit)
        {
            return u + 5;
        }
    }
    if start > 0 && start < bytes.len() && is_escaped(bytes, start) {
        return start + 1;
    }
    start
}

fn is_word_byte(byte: Option<u8>) -> bool {
    byte.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Finds the card numbers in a run of digits with single separators (`text[start..end]`):
/// the longest runs of whole groups that have 13 to 19 digits, are grouped like a card (one
/// group, or a first group of 4), start with a digit a card can start with (2 to 6) and
/// pass the Luhn check.
fn find_cards(text: &str, start: usize, end: usize, push: &mut impl FnMut(usize, usize)) {
    let start = past_escape(text, start);
    if start >= end {
        return;
    }
    let run = &text.as_bytes()[start..end];
    // Groups of digits: (start, end) offsets in `run`.
    let mut groups: Vec<(usize, usize)> = Vec::new();
    let mut group_start = 0;
    for (i, &b) in run.iter().enumerate() {
        if !b.is_ascii_digit() {
            groups.push((group_start, i));
            group_start = i + 1;
        }
    }
    groups.push((group_start, run.len()));
    let mut i = 0;
    while i < groups.len() {
        let mut found = None;
        for j in (i + 1..=groups.len()).rev() {
            let digits = || {
                groups[i..j]
                    .iter()
                    .flat_map(|&(s, e)| run[s..e].iter().map(|b| b - b'0'))
            };
            let count = digits().count();
            // Printed card numbers are grouped 4-4-4-4 or 4-6-5: a first group of another
            // length is some other number in front of the card.
            let grouping_ok = j == i + 1 || groups[i].1 - groups[i].0 == 4;
            if grouping_ok
                && (13..=19).contains(&count)
                && (2..=6).contains(&digits().next().unwrap_or(0))
                && luhn(digits())
            {
                found = Some(j);
                break;
            }
        }
        match found {
            Some(j) => {
                push(start + groups[i].0, start + groups[j - 1].1);
                i = j;
            }
            None => i += 1,
        }
    }
}

/// The Luhn checksum: from the rightmost digit, every second digit is doubled (minus 9 when
/// above 9); the sum must be a multiple of 10.
pub fn luhn(digits: impl DoubleEndedIterator<Item = u8>) -> bool {
    let sum: u32 = digits
        .rev()
        .enumerate()
        .map(|(i, d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// An IPv4 candidate is an address unless it is part of a longer dotted number
/// (`1.2.3.4.5`, `11.2.3.4` matched from its second digit).
fn is_ipv4(text: &str, start: usize, end: usize) -> bool {
    let before = prev_byte(text, start);
    if before.is_some_and(|b| b.is_ascii_digit() || b == b'.') {
        return false;
    }
    let bytes = text.as_bytes();
    match bytes.get(end) {
        Some(b) if b.is_ascii_digit() => false,
        Some(b'.') => !bytes.get(end + 1).is_some_and(u8::is_ascii_digit),
        _ => true,
    }
}

/// An IPv6 candidate is an address when it stands alone, parses, and has at least two
/// groups: `std::net` holds the valid address `d::`, but it is no address.
fn is_ipv6(text: &str, start: usize, end: usize) -> bool {
    let standalone = |b: Option<u8>| !b.is_some_and(|b| b.is_ascii_alphanumeric() || b == b':');
    if !standalone(prev_byte(text, start)) || !standalone(next_byte(text, end)) {
        return false;
    }
    let candidate = &text[start..end];
    candidate.parse::<std::net::Ipv6Addr>().is_ok()
        && candidate.split(':').filter(|g| !g.is_empty()).count() >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner(detectors: &[Detector]) -> Scanner {
        Scanner::new(detectors, &[], &[]).unwrap()
    }

    /// `text` with what `detectors` find masked.
    fn masked(detectors: &[Detector], text: &str) -> String {
        let scanner = scanner(detectors);
        let mut hits = Vec::new();
        if scanner.scan(text, &mut hits) {
            Scanner::replace(text, &hits, &Replacement::Mask)
        } else {
            text.to_string()
        }
    }

    fn assert_masks(detector: Detector, text: &str, expected: &str) {
        assert_eq!(
            masked(&[detector], text),
            expected,
            "{detector:?} on {text:?}"
        );
        // The other detectors do not undo or hide what this one finds.
        assert_eq!(
            masked(&Detector::ALL, text).matches(MASK).count(),
            expected.matches(MASK).count(),
            "all detectors on {text:?}"
        );
    }

    fn assert_untouched(detector: Detector, text: &str) {
        assert_eq!(masked(&[detector], text), text, "{detector:?} on {text:?}");
    }

    #[test]
    fn api_key_masks_openai_project_and_anthropic_keys() {
        let d = Detector::ApiKey;
        assert_masks(
            d,
            "key sk-abcDEF1234567890abcdefGHIJ and more",
            "key **** and more",
        );
        assert_masks(
            d,
            "sk-proj-Ab3dEfGhIjKlMnOpQrStUvWxYz0123456789_-xyz",
            "****",
        );
        assert_masks(
            d,
            "x=sk-ant-api03-AbCdEf0123456789ghijklMNOP-qrstuv",
            "x=****",
        );
    }

    #[test]
    fn api_key_leaves_short_keys_and_hyphenated_prose() {
        let d = Detector::ApiKey;
        assert_untouched(d, "sk-short123");
        assert_untouched(d, "a task-specific-instruction-tuning method");
        assert_untouched(d, "ask-me-anything-about-everything-today");
        assert_untouched(d, "risk-4assessment-framework-enterprise");
    }

    #[test]
    fn aws_key_masks_access_key_ids() {
        let d = Detector::AwsKey;
        assert_masks(d, "id AKIAIOSFODNN7EXAMPLE.", "id ****.");
        assert_masks(d, "ASIAY34FZKBOKMUTVV7A", "****");
        assert_untouched(d, "AKIAIOSFODNN7EXAMPLEXX");
        assert_untouched(d, "AKIAshort");
        assert_untouched(d, "XAKIAIOSFODNN7EXAMPLE");
    }

    #[test]
    fn bearer_masks_the_token_and_keeps_the_scheme() {
        let d = Detector::Bearer;
        assert_masks(
            d,
            "Authorization: Bearer abc.DEF-123_456~xyz=",
            "Authorization: Bearer ****",
        );
        assert_masks(d, "bearer   tok3n-tok3n", "bearer   ****");
        assert_untouched(d, "the bearer of bad news");
        assert_untouched(d, "Bearer short");
    }

    #[test]
    fn jwt_masks_tokens() {
        let d = Detector::Jwt;
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_masks(d, &format!("token={token};"), "token=****;");
        assert_untouched(d, "eyJhbGciOiJIUzI1NiJ9 alone is a header");
    }

    #[test]
    fn email_masks_addresses() {
        let d = Detector::Email;
        assert_masks(d, "mail alice.smith+ai@example.co.uk now", "mail **** now");
        assert_untouched(d, "user@localhost and @decorator");
    }

    #[test]
    fn credit_card_masks_luhn_valid_numbers() {
        let d = Detector::CreditCard;
        assert_masks(
            d,
            "card 4111 1111 1111 1111 exp 12/29",
            "card **** exp 12/29",
        );
        assert_masks(d, "5500-0000-0000-0004", "****");
        assert_masks(d, "amex 378282246310005.", "amex ****.");
        // A card next to other digit groups is still found.
        assert_masks(d, "ref 12-34 4111111111111111 ok", "ref 12-34 **** ok");
    }

    #[test]
    fn credit_card_leaves_luhn_invalid_and_non_card_numbers() {
        let d = Detector::CreditCard;
        // One digit off: fails Luhn.
        assert_untouched(d, "card 4111 1111 1111 1112");
        assert_untouched(d, "4111111111111121");
        // Nanosecond timestamps and long ids do not start like cards or are too long.
        assert_untouched(d, "ts 1712345678901234567");
        assert_untouched(d, "id 41111111111111111111111");
        assert_untouched(d, "phone +1 555-123-4567");
    }

    /// One secret of each detector's kind, with what masking leaves of it.
    const SECRETS: [(Detector, &str, &str); 9] = [
        (Detector::ApiKey, "sk-abcDEF1234567890abcdefGHIJ", "****"),
        (Detector::AwsKey, "AKIAIOSFODNN7EXAMPLE", "****"),
        (Detector::AwsKey, "ASIAY34FZKBOKMUTVV7A", "****"),
        (Detector::Bearer, "BEARER tok3n-tok3n", "BEARER ****"),
        (
            Detector::Jwt,
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
            "****",
        ),
        (Detector::Email, "a@b.io", "****"),
        (Detector::CreditCard, "4111111111111111", "****"),
        (Detector::Ip, "10.0.0.1", "****"),
        (Detector::Ip, "::1:2", "****"),
    ];

    #[test]
    fn secrets_are_found_alone_and_at_either_end_of_long_values() {
        // Long enough to span several of the digit count's 255-byte chunks and vector widths.
        let filler = "lorem ipsum dolor sit amet, ".repeat(40);
        for (detector, secret, masked_secret) in SECRETS {
            assert_masks(detector, secret, masked_secret);
            assert_masks(
                detector,
                &format!("{secret} {filler}"),
                &format!("{masked_secret} {filler}"),
            );
            assert_masks(
                detector,
                &format!("{filler} {secret}"),
                &format!("{filler} {masked_secret}"),
            );
            // Straddling a 255-byte chunk of the digit count.
            let pad = "x".repeat(250);
            assert_masks(
                detector,
                &format!("{pad} {secret} {pad}"),
                &format!("{pad} {masked_secret} {pad}"),
            );
        }
    }

    #[test]
    fn signs_note_what_each_detector_needs_at_any_position() {
        let cases: [(&str, u8); 8] = [
            ("sk-", Signs::SK),
            ("AKI", Signs::AKIA_ASIA),
            ("ASI", Signs::AKIA_ASIA),
            ("rer", Signs::RER),
            ("RER", Signs::RER),
            ("eyJ", Signs::EYJ),
            ("1.2", Signs::DIGIT_DOT_DIGIT),
            ("f:0", Signs::HEX_COLON),
        ];
        for (needle, bit) in cases {
            for at in [0, 1, 15, 16, 31, 32, 63, 100] {
                let text = format!("{}{needle}{}", "_".repeat(at), "_".repeat(100 - at));
                assert_eq!(Signs::of(text.as_bytes()).bits, bit, "{needle:?} at {at}");
            }
            assert_eq!(Signs::of(needle.as_bytes()).bits, bit, "{needle:?} alone");
        }
        assert_eq!(Signs::of(b"@").bits, Signs::AT);
        assert_eq!(Signs::of(b"::").bits, Signs::HEX_COLON);
        assert_eq!(Signs::of(br#"{"role":"user"}"#).bits, 0);
    }

    /// The signs of `bytes` read one window at a time, as their definitions say.
    fn signs_one_by_one(bytes: &[u8]) -> Signs {
        let digit = |b: u8| b.is_ascii_digit();
        let hexish = |b: u8| (b'0'..=b'f').contains(&b);
        let mut bits = 0;
        for w in bytes.windows(3) {
            let (a, b, c) = (w[0], w[1], w[2]);
            let seen = [
                (w == b"sk-", Signs::SK),
                (w == b"AKI" || w == b"ASI", Signs::AKIA_ASIA),
                (
                    (a == b'r' && c == b'r' || a == b'R' && c == b'R') && b | 0x20 == b'e',
                    Signs::RER,
                ),
                (w == b"eyJ", Signs::EYJ),
                (digit(a) && b == b'.' && digit(c), Signs::DIGIT_DOT_DIGIT),
                (hexish(a) && b == b':' && hexish(c), Signs::HEX_COLON),
            ];
            for (is, bit) in seen {
                if is {
                    bits |= bit;
                }
            }
        }
        if bytes.contains(&b'@') {
            bits |= Signs::AT;
        }
        if bytes.len() >= 2 && bytes[0] == b':' && hexish(bytes[1]) {
            bits |= Signs::HEX_COLON;
        }
        let digits = bytes.iter().filter(|b| b.is_ascii_digit()).count();
        Signs { bits, digits }
    }

    #[test]
    fn signs_of_every_length_and_offset_agree_with_reading_one_window_at_a_time() {
        // Around the block size, where a value ends in the zero-padded last block or a sign
        // straddles two blocks.
        let needles = [
            "sk-", "AKI", "ASI", "rer", "RER", "eyJ", "@", "1.2", "f:0", "::1", "7",
        ];
        for len in 0..=100usize {
            for needle in needles {
                for at in 0..=len.saturating_sub(needle.len()) {
                    if needle.len() > len {
                        break;
                    }
                    let mut text = vec![b'_'; len];
                    text[at..at + needle.len()].copy_from_slice(needle.as_bytes());
                    assert_eq!(
                        Signs::of(&text),
                        signs_one_by_one(&text),
                        "{needle:?} at {at} of {len}"
                    );
                }
            }
        }
        let prose = "Revenue grew 12% to 4.2M; see sk-x, AKIA/ASIA, Bearer eyJ, a@b, ::1 and f:0. ";
        let long = prose.repeat(20);
        for end in 0..long.len() {
            let text = &long.as_bytes()[..end];
            assert_eq!(Signs::of(text), signs_one_by_one(text), "prefix of {end}");
        }
    }

    #[test]
    fn digits_are_counted_past_the_lane_counters_capacity() {
        // More than 255 blocks of 32 digits each: the `u8` lane counters are emptied in time.
        let text = "7".repeat(32 * 300 + 5);
        assert_eq!(Signs::of(text.as_bytes()).digits, 32 * 300 + 5);
    }

    #[test]
    fn digits_are_counted_across_chunks() {
        let text = format!("{}x{}", "7".repeat(300), "a1".repeat(200));
        assert_eq!(Signs::of(text.as_bytes()).digits, 500);
        assert_eq!(Signs::of(b"").digits, 0);
    }

    #[test]
    fn luhn_checksum_matches_known_numbers() {
        let digits = |s: &str| s.bytes().map(|b| b - b'0').collect::<Vec<_>>().into_iter();
        assert!(luhn(digits("79927398713")));
        assert!(!luhn(digits("79927398710")));
        assert!(luhn(digits("4111111111111111")));
    }

    #[test]
    fn ip_masks_ipv4_and_ipv6_addresses() {
        let d = Detector::Ip;
        assert_masks(d, "from 192.168.1.20, then", "from ****, then");
        assert_masks(d, "peer=10.0.0.1.", "peer=****.");
        assert_masks(d, "a 1.2.3.4.5 b 8.8.8.8", "a 1.2.3.4.5 b ****");
        assert_masks(d, "v6 2001:db8::8a2e:370:7334 here", "v6 **** here");
        assert_masks(d, "[fe80::1ff:fe23:4567:890a]:443", "[****]:443");
        assert_masks(d, "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "****");
    }

    #[test]
    fn ip_leaves_times_versions_with_more_parts_and_code_paths() {
        let d = Detector::Ip;
        assert_untouched(d, "at 12:30:45 on 2024-01-01");
        assert_untouched(d, "version 1.2.3.4.5");
        assert_untouched(d, "300.1.1.1");
        assert_untouched(d, "1234.1.1.1 and 1.2.3");
        assert_untouched(d, "use std::net::Ipv6Addr; Vec::new()");
        assert_untouched(d, "mac 00:1a:2b:3c:4d:5e");
    }

    #[test]
    fn secrets_inside_json_are_masked_and_the_json_stays_valid() {
        let json = r#"[{"role":"user","content":"hi\nalice@example.com\tkey:\nsk-abcdef1234567890ABCDEFGH\n\u00e94111111111111111"}]"#;
        let out = masked(&Detector::ALL, json);
        assert_eq!(
            out,
            r#"[{"role":"user","content":"hi\n****\tkey:\n****\n\u00e9****"}]"#
        );
    }

    #[test]
    fn overlapping_hits_are_merged_into_one_mask() {
        // A bearer token that is also an API key.
        let out = masked(
            &Detector::ALL,
            "Authorization: Bearer sk-abcdef1234567890ABCDEFGH",
        );
        assert_eq!(out, "Authorization: Bearer ****");
    }

    #[test]
    fn blocked_values_mask_the_matching_part() {
        let scanner = Scanner::new(&[], &["secret-[0-9]+".to_string()], &[]).unwrap();
        let mut hits = Vec::new();
        let text = "a secret-42 and secret-7!";
        assert!(scanner.scan(text, &mut hits));
        assert_eq!(
            Scanner::replace(text, &hits, &Replacement::Mask),
            "a **** and ****!"
        );
        assert_eq!(scanner.rule_names()[hits[0].rule], BLOCKED_VALUES);
    }

    /// `text` with what `blocked_values` find masked.
    fn blocked_masked(blocked_values: &[&str], text: &str) -> String {
        let patterns: Vec<String> = blocked_values.iter().map(|p| p.to_string()).collect();
        let scanner = Scanner::new(&[], &patterns, &[]).unwrap();
        let mut hits = Vec::new();
        if scanner.scan(text, &mut hits) {
            Scanner::replace(text, &hits, &Replacement::Mask)
        } else {
            text.to_string()
        }
    }

    const ISSUE_BLOCKED_VALUES: [&str; 2] = ["sk-[A-Za-z0-9_-]{20,}", "AKIA[0-9A-Z]{16}"];

    #[test]
    fn blocked_values_gate_reads_the_shortest_match_and_required_prefixes() {
        let sources = ISSUE_BLOCKED_VALUES.map(String::from);
        let gate = BlockedGate::new(&sources);
        assert_eq!(gate.min_len, 20);
        let prefixes: Vec<&[u8]> = gate
            .prefixes
            .as_ref()
            .expect("both patterns start with a literal")
            .iter()
            .map(|f| f.needle())
            .collect();
        assert_eq!(prefixes, [&b"sk-"[..], b"AKIA"]);
        // A pattern without a literal every match starts with turns the prefix search off.
        let gate = BlockedGate::new(&["sk-[a-z]{4}".into(), "[a-z]+-token".into()]);
        assert!(gate.prefixes.is_none());
        assert_eq!(gate.min_len, 7);
    }

    #[test]
    fn blocked_values_are_found_at_the_start_and_end_and_at_exactly_the_shortest_length() {
        let key = "AKIAIOSFODNN7EXAMPL1";
        assert_eq!(key.len(), 20);
        let b = &ISSUE_BLOCKED_VALUES;
        assert_eq!(blocked_masked(b, key), "****");
        assert_eq!(blocked_masked(b, &key[..19]), &key[..19]);
        assert_eq!(blocked_masked(b, &format!("{key} tail")), "**** tail");
        assert_eq!(blocked_masked(b, &format!("head {key}")), "head ****");
        let sk = "sk-abcdefghij0123456789";
        assert_eq!(sk.len(), 23);
        assert_eq!(blocked_masked(b, sk), "****");
        assert_eq!(
            blocked_masked(b, &format!("{}{sk}", "x ".repeat(100))),
            format!("{}****", "x ".repeat(100))
        );
        // A one-byte pattern and a value of one byte.
        assert_eq!(blocked_masked(&["#"], "#"), "****");
        // The shortest match counts bytes: `é` is two.
        assert_eq!(blocked_masked(&["é[0-9]{2}"], "é12"), "****");
    }

    #[test]
    fn blocked_values_without_required_literals_still_run_on_every_value() {
        assert_eq!(
            blocked_masked(&["[a-z]+-token"], "my api-token!"),
            "my ****!"
        );
        assert_eq!(
            blocked_masked(&["(?i)secret-[0-9]+"], "a SeCrEt-42"),
            "a ****"
        );
        assert_eq!(
            blocked_masked(&["[0-9]{3}-[0-9]{4}"], "call 555-1234"),
            "call ****"
        );
        assert_eq!(
            blocked_masked(&["sk-[a-z]{4}", ".*password=\\S+"], "x password=hunter2"),
            "****"
        );
        // A pattern matching nothing neither opens nor closes the gate for the others.
        assert_eq!(
            blocked_masked(&["[^\\x00-\\x{10FFFF}]", "abc"], "xabcx"),
            "x****x"
        );
        assert_eq!(
            blocked_masked(&["foo|barbaz", "^id=[0-9]{6}$"], "a barbaz"),
            "a ****"
        );
        assert_eq!(
            blocked_masked(&["foo|barbaz", "^id=[0-9]{6}$"], "id=123456"),
            "****"
        );
    }

    #[test]
    fn blocked_values_gate_never_closes_on_a_value_the_set_matches() {
        let patterns = [
            "sk-[A-Za-z0-9_-]{20,}",
            "AKIA[0-9A-Z]{16}",
            "(?i)token",
            "foo|barbaz",
            "x{3,}y?",
            "[0-9]{4}",
            "\\bkey\\b",
            "é.",
            "(?m)^line$",
        ];
        let texts = [
            "",
            "a",
            "xxx",
            "xxxy",
            "TOKEN",
            "tOkEn",
            "1234",
            "123",
            "barbaz",
            "fo",
            "a key b",
            "keys",
            "é",
            "éa",
            "é\n",
            "x\nline\ny",
            "line",
            "AKIAIOSFODNN7EXAMPLE",
            "sk-abcdefghij0123456789",
            "sk-abcdefghij012345678",
        ];
        for pattern in patterns {
            let set = RegexSet::new([pattern]).unwrap();
            let gate = BlockedGate::new(&[pattern.to_string()]);
            for text in texts {
                for wrapped in [
                    text.to_string(),
                    format!("  {text}  "),
                    format!("{text}{text}"),
                ] {
                    assert!(
                        gate.may_match(&wrapped) || !set.is_match(&wrapped),
                        "{pattern:?} on {wrapped:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn allowed_values_take_precedence_over_detectors_and_blocked_values() {
        let scanner = Scanner::new(
            &[Detector::Email],
            &["mycompany\\.com".to_string()],
            &["[a-z.]+@mycompany\\.com".to_string()],
        )
        .unwrap();
        let mut hits = Vec::new();
        let text = "to support@mycompany.com cc eve@evil.com";
        assert!(scanner.scan(text, &mut hits));
        assert_eq!(
            Scanner::replace(text, &hits, &Replacement::Mask),
            "to support@mycompany.com cc ****"
        );
    }

    #[test]
    fn hash_replacement_is_stable_keyed_hex() {
        let scanner = scanner(&[Detector::Email]);
        let mut hits = Vec::new();
        let text = "a@b.io and a@b.io";
        assert!(scanner.scan(text, &mut hits));
        let out = Scanner::replace(text, &hits, &Replacement::hash(b"0123456789abcdef"));
        let (first, second) = out.split_once(" and ").unwrap();
        assert_eq!(first, second, "equal secrets give equal hashes");
        assert_eq!(first.len(), 64);
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()));
        // HMAC-SHA256("0123456789abcdef", "a@b.io"), computed independently with
        // `printf 'a@b.io' | openssl dgst -sha256 -hmac 0123456789abcdef`.
        assert_eq!(first, HMAC_OF_A_AT_B_IO);
        let other_key = Scanner::replace(text, &hits, &Replacement::hash(b"another key 1234"));
        assert_ne!(other_key, out, "the key changes the hash");
    }

    const HMAC_OF_A_AT_B_IO: &str =
        "225e6edf6133800070ca8a1993911c5bdbd140dcd97361f267f0faa15b04aace";

    #[test]
    fn no_match_allocates_nothing_and_reports_nothing() {
        let scanner = scanner(&Detector::ALL);
        let mut hits = Vec::new();
        assert!(!scanner.scan(
            "The model answered politely about the weather in Paris.",
            &mut hits
        ));
        assert_eq!(hits.capacity(), 0);
    }

    #[test]
    fn patterns_matching_the_empty_string_are_refused() {
        let error = Scanner::new(&[], &["ok".into(), "a*".into()], &[])
            .err()
            .unwrap();
        assert!(
            matches!(&error, ScannerError::Blocked(e) if e.index == 1),
            "{error}"
        );
        assert!(error.to_string().contains("empty string"), "{error}");
    }

    #[test]
    fn invalid_patterns_are_errors_naming_their_index() {
        let error = Scanner::new(&[], &[], &["fine".into(), "(unclosed".into()])
            .err()
            .unwrap();
        assert_eq!(
            error,
            ScannerError::Allowed(PatternError {
                index: 1,
                message: error_message(&error)
            })
        );
        assert!(
            error
                .to_string()
                .starts_with("allowed_values[1]: invalid regular expression")
        );
    }

    fn error_message(error: &ScannerError) -> String {
        match error {
            ScannerError::Blocked(e) | ScannerError::Allowed(e) => e.message.clone(),
        }
    }
}
