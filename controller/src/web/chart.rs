//! The tenant page's daily chart: server-rendered SVG bars, no script.

use std::fmt::Write;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;

use crate::billing::money::{format_count, format_usd};
use crate::store::billing::DayLine;

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 200.0;
const LEFT: f64 = 64.0;
const BOTTOM: f64 = 24.0;

/// Client cost per day as bars, each with a tooltip of its figures.
pub fn daily_svg(days: &[DayLine]) -> String {
    let max = days
        .iter()
        .map(|d| d.client_cost)
        .max()
        .unwrap_or(Decimal::ZERO);
    // Pixel geometry only; the figures in labels are the exact decimals.
    let max_f = max.to_f64().unwrap_or(0.0).max(f64::MIN_POSITIVE);
    let plot_w = WIDTH - LEFT - 8.0;
    let plot_h = HEIGHT - BOTTOM - 8.0;
    let slot = plot_w / days.len().max(1) as f64;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="client cost per day" xmlns="http://www.w3.org/2000/svg">"#
    );
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" y1="{y}" x2="{x2}" y2="{y}" stroke="#999"/><text x="{tx}" y="14" font-size="11" text-anchor="end">{top}</text><text x="{tx}" y="{y}" font-size="11" text-anchor="end">$0</text>"##,
        y = 8.0 + plot_h,
        x2 = WIDTH - 8.0,
        tx = LEFT - 6.0,
        top = format_usd(max),
    );
    for (i, d) in days.iter().enumerate() {
        let v = d.client_cost.to_f64().unwrap_or(0.0);
        let h = if max.is_zero() {
            0.0
        } else {
            (v / max_f * plot_h).max(if v > 0.0 { 1.0 } else { 0.0 })
        };
        let x = LEFT + i as f64 * slot + slot * 0.15;
        let _ = write!(
            svg,
            r##"<rect x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="#3a6ea5"><title>{day}: {cost} client cost, {tokens} tokens, {req} requests</title></rect>"##,
            y = 8.0 + plot_h - h,
            w = slot * 0.7,
            day = d.day,
            cost = format_usd(d.client_cost),
            tokens = format_count(d.tokens),
            req = format_count(d.requests),
        );
    }
    for (i, d) in days.iter().enumerate() {
        let last = days.len() - 1;
        // Weekly labels, and the last day's unless a weekly one sits next to it.
        if i == 0 || i == last || (i.is_multiple_of(7) && last - i >= 3) {
            let _ = write!(
                svg,
                r#"<text x="{x:.1}" y="{y}" font-size="10" text-anchor="middle">{label}</text>"#,
                x = LEFT + (i as f64 + 0.5) * slot,
                y = HEIGHT - 6.0,
                label = d.day.format("%m-%d"),
            );
        }
    }
    svg.push_str("</svg>");
    svg
}
