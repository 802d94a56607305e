//! The price table: which prices apply to a model, and what a usage costs at those prices.
//!
//! Arithmetic is exact. A price is kept as an integer number of micro-dollars per million
//! tokens, so `tokens × price` is an integer number of pico-dollars (10⁻¹² USD); the terms are
//! summed as integers and turned into a float once, by one correctly rounded division. A cost
//! is therefore the double nearest to its exact decimal value (for costs up to $9,007, where
//! pico-dollars stop being exact in a double), not the sum of rounded terms.

use std::collections::HashMap;

use thiserror::Error;

/// Pico-dollars per dollar.
const PICO_PER_USD: f64 = 1e12;
/// The most a price may be, in USD per million tokens: far above any real price, and low
/// enough that no sum of `tokens × price` can overflow.
pub(crate) const MAX_PRICE: f64 = 1e6;

/// The prices of one model, in micro-dollars per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    reasoning: u64,
}

/// USD per million tokens to micro-dollars per million tokens (prices are kept to six decimals).
fn micro(usd_per_million: f64) -> u64 {
    (usd_per_million * 1e6).round() as u64
}

impl Price {
    /// Prices in USD per million tokens. Cache prices default to the input price and the
    /// reasoning price to the output price. Each price must be finite, ≥ 0 and ≤ [`MAX_PRICE`]
    /// (checked by the config).
    pub fn new(
        input: f64,
        output: f64,
        cache_read: Option<f64>,
        cache_write: Option<f64>,
        reasoning: Option<f64>,
    ) -> Price {
        Price {
            input: micro(input),
            output: micro(output),
            cache_read: micro(cache_read.unwrap_or(input)),
            cache_write: micro(cache_write.unwrap_or(input)),
            reasoning: micro(reasoning.unwrap_or(output)),
        }
    }

    /// What `usage` costs at these prices.
    ///
    /// Cache tokens are part of the input tokens and reasoning tokens part of the output
    /// tokens, as OpenAI reports them and the GenAI conventions ask, so
    ///
    /// ```text
    /// prompt     = (input − cache_read − cache_write) × input
    ///              + cache_read × cache_read + cache_write × cache_write
    /// completion = (output − reasoning) × output + reasoning × reasoning
    /// ```
    ///
    /// A usage whose parts exceed their total does not follow that rule and is not priced.
    pub fn cost(&self, usage: &Usage) -> Result<Cost, InconsistentUsage> {
        let cached = usage.cache_read.saturating_add(usage.cache_write);
        let uncached_input =
            usage
                .input
                .checked_sub(cached)
                .ok_or(InconsistentUsage::CacheExceedsInput {
                    input: usage.input,
                    cached,
                })?;
        let plain_output = usage.output.checked_sub(usage.reasoning).ok_or(
            InconsistentUsage::ReasoningExceedsOutput {
                output: usage.output,
                reasoning: usage.reasoning,
            },
        )?;
        let term = |tokens: u64, price: u64| u128::from(tokens) * u128::from(price);
        Ok(Cost {
            prompt: term(uncached_input, self.input)
                + term(usage.cache_read, self.cache_read)
                + term(usage.cache_write, self.cache_write),
            completion: term(plain_output, self.output) + term(usage.reasoning, self.reasoning),
        })
    }
}

/// Token counts of one model call (or a sum of them). Missing counts are 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Every input (prompt) token, cached ones included.
    pub input: u64,
    /// Every output (completion) token, reasoning ones included.
    pub output: u64,
    /// Input tokens read from the provider's cache.
    pub cache_read: u64,
    /// Input tokens written to the provider's cache.
    pub cache_write: u64,
    /// Output tokens spent on reasoning.
    pub reasoning: u64,
}

/// A usage whose parts exceed the total they belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InconsistentUsage {
    #[error("{cached} cache tokens exceed the {input} input tokens they are part of")]
    CacheExceedsInput { input: u64, cached: u64 },
    #[error("{reasoning} reasoning tokens exceed the {output} output tokens they are part of")]
    ReasoningExceedsOutput { output: u64, reasoning: u64 },
}

/// A cost, in pico-dollars.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    prompt: u128,
    completion: u128,
}

impl Cost {
    /// The input side in USD: uncached, cache-read and cache-write tokens.
    pub fn prompt_usd(&self) -> f64 {
        usd(self.prompt)
    }

    /// The output side in USD: output and reasoning tokens.
    pub fn completion_usd(&self) -> f64 {
        usd(self.completion)
    }

    /// Everything, in USD.
    pub fn total_usd(&self) -> f64 {
        usd(self.prompt + self.completion)
    }
}

fn usd(pico: u128) -> f64 {
    pico as f64 / PICO_PER_USD
}

/// A model name pattern: `*` matches any run of characters (none included), `?` exactly one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<Token>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(char),
    One,
    Any,
}

impl Glob {
    /// Parses `pattern`; `None` when it has no wildcard (it is an exact name).
    pub fn parse(pattern: &str) -> Option<Glob> {
        let tokens: Vec<Token> = pattern
            .chars()
            .map(|c| match c {
                '*' => Token::Any,
                '?' => Token::One,
                c => Token::Literal(c),
            })
            .collect();
        tokens
            .iter()
            .any(|t| !matches!(t, Token::Literal(_)))
            .then_some(Glob(tokens))
    }

    /// How many characters the pattern fixes: more is more specific.
    pub fn literal_count(&self) -> usize {
        self.0
            .iter()
            .filter(|t| matches!(t, Token::Literal(_)))
            .count()
    }

    /// Whether `text` matches the whole pattern. Linear in practice: on a mismatch it only
    /// ever goes back to the last `*`, which is enough because a later `*` can absorb
    /// whatever an earlier one would have.
    pub fn matches(&self, text: &str) -> bool {
        let tokens = &self.0;
        let (mut p, mut t) = (0, 0);
        // After the last `*` seen: the token after it, and where in the text it resumes.
        let mut resume: Option<(usize, usize)> = None;
        while let Some(c) = text[t..].chars().next() {
            match tokens.get(p) {
                Some(Token::Any) => {
                    p += 1;
                    resume = Some((p, t));
                    continue;
                }
                Some(Token::One) => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                Some(Token::Literal(l)) if *l == c => {
                    p += 1;
                    t += c.len_utf8();
                    continue;
                }
                _ => {}
            }
            // Mismatch: let the last `*` absorb one more character, or fail.
            let Some((star_p, star_t)) = resume else {
                return false;
            };
            let Some(absorbed) = text[star_t..].chars().next() else {
                return false;
            };
            let next_t = star_t + absorbed.len_utf8();
            resume = Some((star_p, next_t));
            p = star_p;
            t = next_t;
        }
        tokens[p..].iter().all(|t| *t == Token::Any)
    }
}

/// Model names and patterns with their prices.
///
/// Lookup order: an exact name wins; otherwise the most specific matching pattern (the one
/// fixing the most characters: `gpt-4o-mini*` before `gpt-4o*`), the first in the table
/// among equally specific ones.
#[derive(Debug, Clone, Default)]
pub struct PriceTable {
    exact: HashMap<String, Price>,
    /// Sorted most specific first, table order among equals.
    globs: Vec<(Glob, Price)>,
}

impl PriceTable {
    /// A table of `(model or pattern, price)` entries; duplicates are the config's to refuse
    /// (the first one is kept).
    pub fn new(entries: impl IntoIterator<Item = (String, Price)>) -> PriceTable {
        let mut table = PriceTable::default();
        for (model, price) in entries {
            match Glob::parse(&model) {
                Some(glob) => table.globs.push((glob, price)),
                None => {
                    table.exact.entry(model).or_insert(price);
                }
            }
        }
        // A stable sort keeps table order among equally specific patterns.
        table
            .globs
            .sort_by_key(|(glob, _)| std::cmp::Reverse(glob.literal_count()));
        table
    }

    /// The prices for `model`, if the table has any.
    pub fn lookup(&self, model: &str) -> Option<&Price> {
        if let Some(price) = self.exact.get(model) {
            return Some(price);
        }
        self.globs
            .iter()
            .find(|(glob, _)| glob.matches(model))
            .map(|(_, price)| price)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64, output: f64) -> Price {
        Price::new(input, output, None, None, None)
    }

    #[test]
    fn glob_star_and_question_mark() {
        let glob = Glob::parse("gpt-4o*").unwrap();
        assert!(glob.matches("gpt-4o"));
        assert!(glob.matches("gpt-4o-2024-08-06"));
        assert!(!glob.matches("gpt-4"));
        assert!(!glob.matches("xgpt-4o"));

        let glob = Glob::parse("claude-?-*-sonnet").unwrap();
        assert!(glob.matches("claude-3-5-sonnet"));
        assert!(glob.matches("claude-3-x-y-sonnet"));
        assert!(!glob.matches("claude-3-sonnet"));
        assert!(!glob.matches("claude-3-5-sonnet-latest"));

        let glob = Glob::parse("*mini*").unwrap();
        assert!(glob.matches("o4-mini-high"));
        assert!(glob.matches("mini"));
        assert!(!glob.matches("minx"));

        // `?` is one character, not one byte.
        let glob = Glob::parse("mod?l").unwrap();
        assert!(glob.matches("modèl"));
        assert!(!glob.matches("modl"));

        assert!(Glob::parse("a**b").unwrap().matches("ab"));
        assert!(Glob::parse("*").unwrap().matches(""));
        assert!(
            Glob::parse("gpt-4o").is_none(),
            "no wildcard: an exact name"
        );
    }

    #[test]
    fn glob_backtracks_to_the_last_star() {
        let glob = Glob::parse("*a*ab").unwrap();
        assert!(glob.matches("xaxaab"));
        assert!(glob.matches("aab"));
        assert!(!glob.matches("xaxab-"));
        assert!(Glob::parse("*-mini").unwrap().matches("o4-mini-x-mini"));
    }

    #[test]
    fn exact_name_wins_over_patterns_then_most_specific_pattern() {
        let table = PriceTable::new([
            ("gpt-4o*".to_string(), price(2.5, 10.0)),
            ("gpt-4o-mini*".to_string(), price(0.15, 0.6)),
            ("gpt-4o-2024-05-13".to_string(), price(5.0, 15.0)),
            ("*".to_string(), price(99.0, 99.0)),
        ]);
        assert_eq!(table.lookup("gpt-4o-2024-05-13"), Some(&price(5.0, 15.0)));
        assert_eq!(table.lookup("gpt-4o-2024-08-06"), Some(&price(2.5, 10.0)));
        assert_eq!(table.lookup("gpt-4o-mini"), Some(&price(0.15, 0.6)));
        assert_eq!(table.lookup("llama"), Some(&price(99.0, 99.0)));
    }

    #[test]
    fn equally_specific_patterns_apply_in_table_order() {
        let table = PriceTable::new([
            ("o?-*".to_string(), price(1.0, 1.0)),
            ("o*-?".to_string(), price(2.0, 2.0)),
        ]);
        // Both fix two characters and both match: the first entry applies.
        assert_eq!(table.lookup("o3-m"), Some(&price(1.0, 1.0)));
    }

    #[test]
    fn model_outside_the_table_has_no_price() {
        let table = PriceTable::new([("gpt-4o*".to_string(), price(2.5, 10.0))]);
        assert_eq!(table.lookup("claude-3-5-sonnet"), None);
        assert_eq!(table.lookup("GPT-4O"), None, "names are case-sensitive");
    }

    /// Acceptance 5: exact figures for a table of models and usages, cached and reasoning
    /// tokens included. Expected values are worked out by hand from the formula, in USD.
    #[test]
    fn cost_table_gives_exact_figures() {
        let table = PriceTable::new([
            // OpenAI list prices (USD per million tokens).
            (
                "gpt-4o*".to_string(),
                Price::new(2.50, 10.00, Some(1.25), None, None),
            ),
            (
                "gpt-4o-mini*".to_string(),
                Price::new(0.15, 0.60, Some(0.075), None, None),
            ),
            (
                "o3-mini".to_string(),
                Price::new(1.10, 4.40, Some(0.55), None, None),
            ),
            // Anthropic-style: cache writes cost more than input, reads less.
            (
                "claude-3-7-sonnet*".to_string(),
                Price::new(3.00, 15.00, Some(0.30), Some(3.75), None),
            ),
            // A separate reasoning price.
            (
                "reasoner".to_string(),
                Price::new(0.55, 2.19, Some(0.14), None, Some(5.0)),
            ),
            // No cache price: cached tokens cost the input price.
            ("plain".to_string(), Price::new(1.0, 2.0, None, None, None)),
        ]);
        let usage = |input, output, cache_read, cache_write, reasoning| Usage {
            input,
            output,
            cache_read,
            cache_write,
            reasoning,
        };
        // (model, usage, prompt USD, completion USD, total USD)
        let cases = [
            // 1000 × 2.50 / 1e6 + 500 × 10 / 1e6
            ("gpt-4o", usage(1000, 500, 0, 0, 0), 0.0025, 0.005, 0.0075),
            // (1000 − 400) × 2.50 + 400 × 1.25 = 1500 + 500 → 0.002
            (
                "gpt-4o-2024-08-06",
                usage(1000, 200, 400, 0, 0),
                0.002,
                0.002,
                0.004,
            ),
            // (2000 − 1024) × 0.15 + 1024 × 0.075 = 146.4 + 76.8 = 223.2 → 0.0002232;
            // 300 × 0.60 = 180 → 0.00018
            (
                "gpt-4o-mini-2024-07-18",
                usage(2000, 300, 1024, 0, 0),
                0.0002232,
                0.00018,
                0.0004032,
            ),
            // (2000 − 896) × 1.10 + 896 × 0.55 = 1214.4 + 492.8 = 1707.2 → 0.0017072;
            // (15 − 12) × 4.40 + 12 × 4.40 (reasoning falls back to output) = 66 → 0.000066
            (
                "o3-mini",
                usage(2000, 15, 896, 0, 12),
                0.0017072,
                0.000066,
                0.0017732,
            ),
            // (10000 − 6000 − 2000) × 3 + 6000 × 0.30 + 2000 × 3.75 = 6000 + 1800 + 7500
            // = 15300 → 0.0153; 1000 × 15 → 0.015
            (
                "claude-3-7-sonnet-20250219",
                usage(10000, 1000, 6000, 2000, 0),
                0.0153,
                0.015,
                0.0303,
            ),
            // 100 × 0.55 = 55; (1000 − 800) × 2.19 + 800 × 5 = 438 + 4000 = 4438
            (
                "reasoner",
                usage(100, 1000, 0, 0, 800),
                0.000055,
                0.004438,
                0.004493,
            ),
            // Cache tokens at the input price: 1000 × 1 = 1000; 10 × 2 = 20
            ("plain", usage(1000, 10, 600, 0, 0), 0.001, 0.00002, 0.00102),
            // Embeddings: input only.
            ("plain", usage(1_000_000, 0, 0, 0, 0), 1.0, 0.0, 1.0),
            // A large cumulative figure stays exact: 123456789 × 2.5 = 308641972.5 µ$;
            // 98765432 × 10 = 987654320 µ$.
            (
                "gpt-4o",
                usage(123_456_789, 98_765_432, 0, 0, 0),
                308.6419725,
                987.65432,
                1296.2962925,
            ),
            ("gpt-4o", usage(0, 0, 0, 0, 0), 0.0, 0.0, 0.0),
        ];
        for (model, usage, prompt, completion, total) in cases {
            let cost = table
                .lookup(model)
                .unwrap_or_else(|| panic!("{model} is priced"))
                .cost(&usage)
                .unwrap();
            assert_eq!(
                (cost.prompt_usd(), cost.completion_usd(), cost.total_usd()),
                (prompt, completion, total),
                "{model} {usage:?}"
            );
        }
    }

    #[test]
    fn parts_exceeding_their_total_are_inconsistent() {
        let price = price(1.0, 1.0);
        let too_much_cache = Usage {
            input: 10,
            cache_read: 8,
            cache_write: 3,
            ..Usage::default()
        };
        assert_eq!(
            price.cost(&too_much_cache),
            Err(InconsistentUsage::CacheExceedsInput {
                input: 10,
                cached: 11
            })
        );
        let too_much_reasoning = Usage {
            output: 5,
            reasoning: 6,
            ..Usage::default()
        };
        assert!(matches!(
            price.cost(&too_much_reasoning),
            Err(InconsistentUsage::ReasoningExceedsOutput { .. })
        ));
    }

    #[test]
    fn prices_are_kept_to_six_decimals() {
        // 0.075 is not exact in binary; it still prices 1M tokens at exactly 0.075.
        let price = Price::new(0.075, 0.0, None, None, None);
        let cost = price
            .cost(&Usage {
                input: 1_000_000,
                ..Usage::default()
            })
            .unwrap();
        assert_eq!(cost.total_usd(), 0.075);
    }
}
