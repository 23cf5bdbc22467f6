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
use crate::store::alerts::Ledger;
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
    budgets(&store.fleet_rows().await?, &ledgers, &mut out);
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
        return Ok((out, 8));
    }
    Ok((out, 7))
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
            let pct = if or.is_zero() {
                Decimal::from(100)
            } else {
                (gap.abs() * Decimal::from(100) / or).round_dp(1)
            };
            if gap.abs() > config.capture_tolerance_usd && pct > config.capture_tolerance_percent {
                let what = if gap > Decimal::ZERO {
                    format!(
                        "{} ({pct} %) not captured, {} unbilled at {}x",
                        format_usd(gap),
                        format_usd(round(gap * l.markup_rate, 6)),
                        l.markup_rate.normalize()
                    )
                } else {
                    format!(
                        "the tenant recorded {} ({pct} %) more than OpenRouter charged",
                        format_usd(-gap)
                    )
                };
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

fn budgets(
    rows: &[crate::store::dashboard::FleetRow],
    ledgers: &[Ledger],
    out: &mut Vec<Candidate>,
) {
    for r in rows {
        let Some(limit) = r.monthly_limit_usd.filter(|l| *l > Decimal::ZERO) else {
            continue;
        };
        let used = r.month_client_cost;
        let summary = format!(
            "{}: client cost {} this month is {} % of its monthly limit {}",
            r.tenant,
            format_usd(used),
            (used * Decimal::from(100) / limit).round(),
            format_usd(limit)
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
            "{}: its OpenRouter key has used {} of its {} limit ({} left); at the limit the client's chats fail",
            l.tenant,
            format_usd(used),
            format_usd(limit),
            format_usd(remaining)
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
