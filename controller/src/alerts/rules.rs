//! The rules: each reads one query's rows for the whole fleet and says which
//! tenants (hosts, the fleet) it fires for, with a summary naming the tenant, the
//! cause and the money at stake.

use chrono::{Datelike, NaiveDate, Timelike, Utc, Weekday};
use chrono_tz::Europe::Warsaw;
use rust_decimal::Decimal;

use super::config::AlertsConfig;
use super::{Candidate, Rule};
use crate::billing::money::{format_usd, round};
use crate::rates::RateTable;
use crate::store::alerts::{Ledger, StoppedKey};
use crate::store::invoices::UnsentMonth;
use crate::store::keys::{CreditState, ModelGap};
use crate::store::{Store, StoreError};

/// Less than this much new OpenRouter spend is not evidence of lost usage.
const MIN_SPEND: Decimal = Decimal::from_parts(1, 0, 0, false, 2);

/// Every rule's candidates, and how many queries they took.
pub async fn find(
    store: &Store,
    config: &AlertsConfig,
    table: RateTable,
) -> Result<(Vec<Candidate>, i32), StoreError> {
    let mut out = Vec::new();
    let ledgers = store.ledgers().await?;
    let inactive = store.inactive_tenants().await?;
    tracking_inactive(&inactive, &ledgers, &mut out);
    capture_gap(&ledgers, config, &mut out);
    // OpenRouter's own per-day ledger (snapshots of /activity) against the
    // store, day by day and model by model, over the 30 days it covers.
    let gaps = store.model_gaps(31, config.capture_tolerance_usd).await?;
    model_gaps(&gaps, config, &mut out);
    if let Some(credit) = store.credit_state().await? {
        account_credit(&credit, config.credit_low_days, &mut out);
    }
    let stopped = store.stopped_keys().await?;
    let silent = store
        .silent_agents((config.agent_interval.as_secs_f64() * 3.0).ceil() as i64)
        .await?;
    for a in silent {
        let since = a.last_seen.map_or("never reported".to_string(), |t| {
            format!("last heartbeat {}", t.format("%Y-%m-%d %H:%M:%S UTC"))
        });
        out.push(Candidate::new(
            Rule::AgentSilent,
            None,
            &[("host", a.host.clone())],
            format!("agent of host {} is silent ({since}): usage of its {} tenant(s) is not reaching the fleet", a.host, a.tenants),
            format!("No heartbeat for more than 3 agent intervals ({}s each).", config.agent_interval.as_secs()),
        ));
    }
    for c in store.down_containers().await? {
        let reason = if c.state == "running" || c.state == "restarting" {
            "restart_loop"
        } else {
            "down"
        };
        out.push(Candidate::new(
            Rule::ContainerDown,
            Some(&c.tenant),
            &[("reason", reason.to_string())],
            format!(
                "{}: container {} on {} is {} ({} restarts): the client cannot chat and nothing is billed",
                c.tenant, c.container, c.host, c.state, c.restart_count
            ),
            String::new(),
        ));
    }
    budgets(&store.fleet_rows().await?, &ledgers, &stopped, &mut out);
    exchange_rate(store.latest_rate_date(table.code()).await?, table, &mut out);
    for r in store.recent_regressions().await? {
        out.push(Candidate::new(
            Rule::StoreRegression,
            Some(&r.tenant),
            &[
                ("table", r.store_table.clone()),
                (
                    "detected",
                    r.detected_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                ),
            ],
            format!(
                "{}: usage store table {} went back ({}); the fleet kept its history",
                r.tenant, r.store_table, r.detail
            ),
            "A reset script or a restored backup: check the tenant's data directory.".into(),
        ));
    }
    invoice_unsent(
        &store.unsent_months(config.invoice_days).await?,
        config.invoice_days,
        &mut out,
    );
    if config
        .rules
        .get(&Rule::BackupMissing)
        .is_some_and(|p| p.enabled)
    {
        let max_age = config.backup_max_age;
        for (tenant, newest) in store
            .tenants_without_backup(max_age.as_secs() as i64)
            .await?
        {
            let last = newest.map_or("never backed up".to_string(), |t| {
                format!("newest backup {}", t.format("%Y-%m-%d %H:%M UTC"))
            });
            out.push(Candidate::new(
                Rule::BackupMissing,
                Some(&tenant),
                &[],
                format!(
                    "{tenant}: no backup younger than {} ({last}): its conversations and usage store would be lost with the host",
                    crate::duration::format(max_age)
                ),
                "`controller backup TENANT` takes one; `serve` takes them on MAI_FLEET_BACKUP_CRON.".into(),
            ));
        }
        return Ok((out, 12));
    }
    Ok((out, 11))
}

/// A closed month whose invoices KSeF has not all accepted `days` after the close:
/// one alert per month, naming the tenants (money billed but not invoiced).
fn invoice_unsent(months: &[UnsentMonth], days: i64, out: &mut Vec<Candidate>) {
    for m in months {
        let month = m.month.format("%Y-%m").to_string();
        let what = if m.drafted {
            "invoices not accepted by KSeF"
        } else {
            "no invoices drafted"
        };
        out.push(Candidate::new(
            Rule::InvoiceUnsent,
            None,
            &[("month", month.clone())],
            format!(
                "{month} closed {} and {days}+ days on: {what} for {}",
                m.closed_at.format("%Y-%m-%d"),
                m.tenants.join(", ")
            ),
            "`controller invoices draft MONTH` then `controller invoices send MONTH`; `invoices list MONTH` shows KSeF's answers.".into(),
        ));
    }
}

fn delta(now: Decimal, base: Option<Decimal>) -> Option<Decimal> {
    base.map(|b| now - b)
}

/// Spend OpenRouter saw over the last 24 h that the fleet did not record.
fn uncaptured_day(l: &Ledger) -> Option<Decimal> {
    let or = delta(l.usage, l.day_usage)?;
    let rec = delta(l.recorded, l.day_recorded)?;
    Some(or - rec).filter(|g| *g > Decimal::ZERO)
}

fn tracking_inactive(
    inactive: &[crate::store::alerts::InactiveTenant],
    ledgers: &[Ledger],
    out: &mut Vec<Candidate>,
) {
    for t in inactive {
        let ledger = ledgers.iter().find(|l| l.tenant == t.tenant);
        let markup = t.markup_rate.unwrap_or(Decimal::ONE);
        let money = match ledger.and_then(uncaptured_day) {
            Some(lost) => format!(
                "; OpenRouter shows {} spent in the last 24 h that was not recorded ({} unbilled at {}x)",
                format_usd(lost),
                format_usd(round(lost * markup, 6)),
                markup.normalize()
            ),
            None => "; every token it serves now goes unbilled".to_string(),
        };
        out.push(Candidate::new(
            Rule::TrackingInactive,
            Some(&t.tenant),
            &[],
            format!("{}: usage tracking inactive on {} ({}){money}", t.tenant, t.host, t.reasons.join("; ")),
            "The container serves chats but records no usage (seed 000). Fix its environment with `controller apply`.".into(),
        ));
    }
    for l in ledgers {
        if inactive.iter().any(|t| t.tenant == l.tenant) {
            continue;
        }
        let (Some(or), Some(rec), Some(since)) = (
            delta(l.usage, l.prev_usage),
            delta(l.recorded, l.prev_recorded),
            l.prev_at,
        ) else {
            continue;
        };
        if or >= MIN_SPEND && rec.is_zero() {
            out.push(Candidate::new(
                Rule::TrackingInactive,
                Some(&l.tenant),
                &[],
                format!(
                    "{}: recorded usage is not advancing while OpenRouter shows {} new spend since {} ({} unbilled at {}x)",
                    l.tenant,
                    format_usd(or),
                    since.format("%H:%M UTC"),
                    format_usd(round(or * l.markup_rate, 6)),
                    l.markup_rate.normalize()
                ),
                "The key is being used but the tenant's store does not grow: tracking is broken or bypassed.".into(),
            ));
        }
    }
}

/// A gap between what OpenRouter charged (`or`) and what was recorded, beyond both
/// tolerances, said with the money at stake; `None` within them.
fn gap_beyond_tolerance(
    or: Decimal,
    gap: Decimal,
    markup: Decimal,
    config: &AlertsConfig,
) -> Option<String> {
    let pct = if or.is_zero() {
        Decimal::from(100)
    } else {
        (gap.abs() * Decimal::from(100) / or).round_dp(1)
    };
    if gap.abs() <= config.capture_tolerance_usd || pct <= config.capture_tolerance_percent {
        return None;
    }
    Some(if gap > Decimal::ZERO {
        format!(
            "{} ({pct} %) not captured, {} unbilled at {}x",
            format_usd(gap),
            format_usd(round(gap * markup, 6)),
            markup.normalize()
        )
    } else {
        format!(
            "the tenant recorded {} ({pct} %) more than OpenRouter charged",
            format_usd(-gap)
        )
    })
}

fn capture_gap(ledgers: &[Ledger], config: &AlertsConfig, out: &mut Vec<Candidate>) {
    for l in ledgers {
        for (window, base_at, base_usage, base_rec) in [
            ("day", l.day_at, l.day_usage, l.day_recorded),
            ("month", l.month_at, l.month_usage, l.month_recorded),
        ] {
            let (Some(at), Some(bu), Some(br)) = (base_at, base_usage, base_rec) else {
                continue;
            };
            if at >= l.polled_at {
                continue;
            }
            let or = l.usage - bu;
            let rec = l.recorded - br;
            let gap = or - rec;
            if let Some(what) = gap_beyond_tolerance(or, gap, l.markup_rate, config) {
                out.push(Candidate::new(
                    Rule::CaptureGap,
                    Some(&l.tenant),
                    &[("window", window.to_string())],
                    format!(
                        "{}: OpenRouter charged {} since {}, the tenant recorded {}: {what}",
                        l.tenant,
                        format_usd(or),
                        at.format("%Y-%m-%d %H:%M UTC"),
                        format_usd(rec)
                    ),
                    format!(
                        "Tolerance {} % and {}. A streaming path that does not record usage looks like this (seed 003).",
                        config.capture_tolerance_percent,
                        format_usd(config.capture_tolerance_usd)
                    ),
                ));
            }
        }
    }
}

/// Whether the tenant's key is stopped now, as a clause of a budget summary.
fn key_state(tenant: &str, ledgers: &[Ledger], stopped: &[StoppedKey]) -> String {
    if let Some(k) = stopped.iter().find(|k| k.tenant == tenant) {
        return format!("; its key {} is stopped ({})", k.mask, k.why);
    }
    match ledgers.iter().find(|l| l.tenant == tenant) {
        Some(l) if l.key_limit.is_some() && l.limit_remaining.is_some_and(|r| r <= Decimal::ZERO) => {
            "; its key is stopped: OpenRouter refuses it at its limit".to_string()
        }
        Some(l) if l.key_limit.is_some() => "; its key still serves (its OpenRouter limit is not reached)".to_string(),
        _ => "; its key still serves: it has no hard limit (`provision: true` or `billing.on_limit: disable` stops it)".to_string(),
    }
}

/// capture_gap per tenant, UTC day and model, from OpenRouter's `/activity`. The
/// store dates usage in the tenant's timezone: usage in the hour or two around
/// midnight may sit on the neighbouring day, within the tolerances for most days.
fn model_gaps(gaps: &[ModelGap], config: &AlertsConfig, out: &mut Vec<Candidate>) {
    for g in gaps {
        let gap = g.openrouter_usd - g.recorded_usd;
        let Some(what) = gap_beyond_tolerance(g.openrouter_usd, gap, g.markup_rate, config) else {
            continue;
        };
        out.push(Candidate::new(
            Rule::CaptureGap,
            Some(&g.tenant),
            &[
                ("window", "ledger_day".to_string()),
                ("day", g.day.to_string()),
                ("model", g.model.clone()),
            ],
            format!(
                "{}: on {} OpenRouter charged {} for {}, the tenant recorded {}: {what}",
                g.tenant,
                g.day,
                format_usd(g.openrouter_usd),
                g.model,
                format_usd(g.recorded_usd)
            ),
            "From OpenRouter's daily ledger (GET /activity) for the tenant's key. `controller reconcile TENANT` shows every day.".into(),
        ));
    }
}

/// account_credit_low: the account's remaining credit against its trailing 7-day
/// burn. When the credit runs out every key of the account stops at once.
fn account_credit(c: &CreditState, min_days: Decimal, out: &mut Vec<Candidate>) {
    let remaining = c.total_credits - c.total_usage;
    let burn_per_day = c.burn_7d.unwrap_or_default() / Decimal::from(7);
    let days_left = if burn_per_day > Decimal::ZERO {
        Some((remaining / burn_per_day).round_dp(1))
    } else {
        None
    };
    let low = remaining <= Decimal::ZERO || days_left.is_some_and(|d| d < min_days);
    if !low {
        return;
    }
    let cover = match days_left {
        Some(d) => format!(
            "covers {d} day(s) at the trailing 7-day burn of {}/day",
            format_usd(round(burn_per_day, 2))
        ),
        None => "is spent".to_string(),
    };
    out.push(Candidate::new(
        Rule::AccountCreditLow,
        None,
        &[],
        format!(
            "OpenRouter credit {} {cover}: when it runs out every client's chats stop at once",
            format_usd(round(remaining, 2))
        ),
        format!(
            "Fires below {} day(s) of credit (rules.account_credit_low.days). Buy credit in OpenRouter's settings; polled {}.",
            min_days.normalize(),
            c.polled_at.format("%Y-%m-%d %H:%M UTC")
        ),
    ));
}

fn budgets(
    rows: &[crate::store::dashboard::FleetRow],
    ledgers: &[Ledger],
    stopped: &[StoppedKey],
    out: &mut Vec<Candidate>,
) {
    for r in rows {
        let Some(limit) = r.monthly_limit_usd.filter(|l| *l > Decimal::ZERO) else {
            continue;
        };
        let used = r.month_client_cost;
        let summary = format!(
            "{}: client cost {} this month is {} % of its monthly limit {}{}",
            r.tenant,
            format_usd(used),
            (used * Decimal::from(100) / limit).round(),
            format_usd(limit),
            if used >= limit {
                key_state(&r.tenant, ledgers, stopped)
            } else {
                String::new()
            }
        );
        push_budget(
            out,
            &r.tenant,
            r.today.format("%Y-%m").to_string(),
            "monthly_limit",
            used,
            limit,
            &summary,
        );
    }
    for l in ledgers {
        let (Some(limit), Some(remaining)) = (
            l.key_limit.filter(|k| *k > Decimal::ZERO),
            l.limit_remaining,
        ) else {
            continue;
        };
        let used = limit - remaining;
        let summary = format!(
            "{}: its OpenRouter key has used {} of its {} limit ({} left); {}",
            l.tenant,
            format_usd(used),
            format_usd(limit),
            format_usd(remaining),
            if remaining <= Decimal::ZERO {
                "the key is stopped: OpenRouter refuses the client's chats until the limit resets"
            } else {
                "at the limit OpenRouter stops the key and the client's chats fail"
            }
        );
        push_budget(
            out,
            &l.tenant,
            l.polled_at.format("%Y-%m").to_string(),
            "key_limit",
            used,
            limit,
            &summary,
        );
    }
}

/// budget_80 and budget_100 for one limit; the month is a label, so each fires
/// once a month.
fn push_budget(
    out: &mut Vec<Candidate>,
    tenant: &str,
    month: String,
    source: &str,
    used: Decimal,
    limit: Decimal,
    summary: &str,
) {
    for (rule, share) in [
        (Rule::Budget80, Decimal::new(8, 1)),
        (Rule::Budget100, Decimal::ONE),
    ] {
        if used >= limit * share {
            out.push(Candidate::new(
                rule,
                Some(tenant),
                &[("month", month.clone()), ("source", source.to_string())],
                summary.to_string(),
                String::new(),
            ));
        }
    }
}

/// Business days (Mon–Fri) whose table should be out by now but is not stored.
pub fn missing_business_days(
    latest: Option<NaiveDate>,
    today: NaiveDate,
    today_published: bool,
) -> i64 {
    let Some(latest) = latest else {
        return i64::MAX;
    };
    let mut n = 0;
    let mut d = latest + chrono::Duration::days(1);
    while d <= today {
        let business = !matches!(d.weekday(), Weekday::Sat | Weekday::Sun);
        if business && (d < today || today_published) {
            n += 1;
        }
        d += chrono::Duration::days(1);
    }
    n
}

fn exchange_rate(latest: Option<NaiveDate>, table: RateTable, out: &mut Vec<Candidate>) {
    let now = Utc::now().with_timezone(&Warsaw);
    let published = match table {
        RateTable::C => now.hour() * 60 + now.minute() >= 8 * 60 + 30,
        RateTable::A => now.hour() * 60 + now.minute() >= 12 * 60 + 30,
    };
    let missing = missing_business_days(latest, now.date_naive(), published);
    if missing > 1 {
        let what = match latest {
            Some(d) => format!(
                "no NBP table {} for {missing} business day(s) (latest of {d})",
                table.code()
            ),
            None => format!("no NBP table {} has ever been fetched", table.code()),
        };
        out.push(Candidate::new(
            Rule::ExchangeRateMissing,
            None,
            &[("table", table.code().to_string())],
            format!("{what}: PLN amounts are stale or missing"),
            "Check `controller rates sync` and the controller's access to the NBP API.".into(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    /// A model name is the tenant's store's text: as a label it reaches every
    /// receiver, so it arrives bounded and without control characters.
    #[test]
    fn a_hostile_model_name_is_a_bounded_label() {
        let config = AlertsConfig::parse("test", "rules: {}\n").unwrap();
        let hostile = format!("evil\u{1b}[31m\n{}", "x".repeat(70_000));
        let gap = ModelGap {
            tenant: "t1".into(),
            day: d("2026-11-30"),
            model: hostile,
            openrouter_usd: Decimal::new(40, 2),
            recorded_usd: Decimal::new(20, 2),
            markup_rate: Decimal::ONE,
        };
        let mut out = Vec::new();
        model_gaps(&[gap], &config, &mut out);
        assert_eq!(out.len(), 1);
        let model = &out[0].labels["model"];
        assert!(
            model.chars().count() <= 201,
            "{} characters",
            model.chars().count()
        );
        assert!(!model.chars().any(char::is_control), "{model:?}");
        assert!(model.starts_with("evil"));
        assert!(
            out[0].summary.chars().count() <= 2_001,
            "summary bounded too"
        );
    }

    #[test]
    fn business_days_missing() {
        // Friday's table, Monday before publication: nothing missing.
        assert_eq!(
            missing_business_days(Some(d("2026-11-20")), d("2026-11-23"), false),
            0
        );
        assert_eq!(
            missing_business_days(Some(d("2026-11-20")), d("2026-11-23"), true),
            1
        );
        assert_eq!(
            missing_business_days(Some(d("2026-11-20")), d("2026-11-24"), true),
            2
        );
        assert_eq!(missing_business_days(None, d("2026-11-24"), true), i64::MAX);
    }
}
