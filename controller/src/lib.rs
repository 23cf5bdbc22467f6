//! mai-fleet controller library: the fleet spec, the plan from desired to observed
//! state, the Docker backend that executes it, and the fleet database.

pub mod alerts;
pub mod apply;
pub mod backend;
pub mod billing;
pub mod crypto;
pub mod docker;
pub mod env;
pub mod execution;
pub use mai_fleet_core::duration;
pub mod http;
pub mod invoices;
pub mod jobs;
pub mod keys;
pub mod kubernetes;
pub mod openrouter;
pub mod ops;
pub mod plan;
pub mod quote;
pub mod rates;
pub mod schedule;
pub mod spec;
pub mod store;
pub mod supervisor;
pub mod web;

/// An error and its causes on one line, as `a: b: c`, skipping causes already
/// spelled out by the level above: what a person needs to tell a certificate problem
/// from a network one.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

/// Text from outside the fleet's control (a tenant's store or logs, a label, what a
/// remote host or its ssh says), made safe to print, store and send: control
/// characters and bidirectional overrides (which make text read other than it is)
/// become spaces (newlines stay), at most `max` characters.
pub fn bounded(text: &str, max: usize) -> String {
    let bidi = |c: char| matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    let clean: String = text
        .chars()
        .map(|c| {
            if (c.is_control() && c != '\n') || bidi(c) {
                ' '
            } else {
                c
            }
        })
        .collect();
    if clean.chars().count() > max {
        let mut cut: String = clean.chars().take(max).collect();
        cut.push('…');
        cut
    } else {
        clean
    }
}
