//! The tenant stand-in's usage store and prices, shared by its binary and by the
//! benchmarks that generate stores of the same shape.

pub mod store;

/// Canned prices in micro-dollars per 1,000 tokens, so that every recorded cost is
/// an exact number of micro-dollars and fleet sums can be checked to 6 places.
pub const MODELS: [(&str, u64); 4] = [
    ("anthropic/claude-3.5-sonnet", 9_000),
    ("openai/gpt-4o-mini", 450),
    ("deepseek/deepseek-chat", 1_100),
    ("google/gemini-2.5-pro", 6_000),
];

/// Price of a model in micro-dollars per 1,000 tokens (unknown models at the first price).
pub fn price_per_k(model: &str) -> u64 {
    MODELS
        .iter()
        .find(|(m, _)| *m == model)
        .map_or(MODELS[0].1, |(_, p)| *p)
}
