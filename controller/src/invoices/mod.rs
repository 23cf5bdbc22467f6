//! Invoices for closed months, as KSeF FA(3) e-invoices: drafted from the frozen
//! billing (`draft`), checked (schema, NIPs, arithmetic) and stored with their XML
//! and its hash, then sent to KSeF with the official receipt kept (`send`).
//!
//! Who calls whom: `cli::invoices`, `web` and `alerts` call this module; it reads
//! `billing` and `rates` and keeps everything through `store`. docs/invoices.md has
//! the rules (numbering, rounding, which exchange rate, corrections).

pub mod document;
pub mod fa3;
pub mod ksef;
pub mod schema;
pub mod send;

use chrono::{DateTime, Days, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::billing::{self, money, BillingError, Line, Month};
use crate::rates::RateTable;
use crate::spec::{FleetSpec, InvoiceCurrency, InvoicingSpec};
use crate::store::invoices::{InvoiceRow, NewInvoice};
use crate::store::{Store, StoreError};
use document::{Amounts, Buyer, Corrected, Invoice, Kind, VatRate};

#[derive(Debug, thiserror::Error)]
pub enum InvoiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Billing(#[from] BillingError),
    #[error("{month} is not closed: invoices are drafted from a closed month only (`controller billing close {month}` freezes it)")]
    NotClosed { month: Month },
    #[error(
        "the spec has no `invoicing:` section: the seller and invoice settings come from there"
    )]
    NotConfigured,
    #[error("no NBP table A rate on or before {day} (7 days back): a USD invoice needs the rate of the last business day before {tax_point} (VAT act art. 31a); `controller rates sync --table A --from {day}` fetches it")]
    NoRate {
        day: NaiveDate,
        tax_point: NaiveDate,
    },
    #[error(transparent)]
    Document(#[from] document::DocumentError),
    #[error(transparent)]
    Schema(#[from] schema::SchemaError),
}

/// Why a tenant of the month got no new invoice.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub tenant: String,
    pub reason: String,
}

/// What one drafting run did.
#[derive(Debug, Clone, Serialize)]
pub struct DraftReport {
    pub month: Month,
    pub drafted: Vec<InvoiceRow>,
    pub skipped: Vec<Skipped>,
    /// Invoices of the month drafted before this run.
    pub existing: usize,
    /// Nothing was stored: `drafted` is what a run would store.
    pub dry_run: bool,
}

/// The day whose NBP table A converts a month's VAT: the last business day before
/// the tax point, the month's last day for a service settled monthly (art. 31a;
/// the store looks back from the day before over weekends and holidays).
pub fn rate_day(month: Month) -> NaiveDate {
    month.last_day() - Days::new(1)
}

/// Everything one run needs besides the store.
pub struct DraftInput<'a> {
    pub spec: &'a FleetSpec,
    pub month: Month,
    pub today: NaiveDate,
    pub now: DateTime<Utc>,
    pub actor: &'a str,
    /// Everything but the commit: the drafts as they would be numbered and stored.
    pub dry_run: bool,
}

/// Drafts `month`'s invoices: one per tenant with a NIP and something to bill, and a
/// correction (KOR) for what a tenant's month gained or lost since its invoices
/// (late usage). All drafts of the run are checked before any is stored; a run
/// with nothing new stores nothing.
pub async fn draft(store: &Store, input: DraftInput<'_>) -> Result<DraftReport, InvoiceError> {
    let settings = input
        .spec
        .invoicing
        .as_ref()
        .ok_or(InvoiceError::NotConfigured)?;
    let month = input.month;
    let mut locked = store
        .lock_month_invoices(month.first_day())
        .await?
        .ok_or(InvoiceError::NotClosed { month })?;
    let report = billing::month_report(store, month, RateTable::A, input.today).await?;
    let rate = vat_rate(store, settings.currency, month).await?;
    let existing = locked.rows.clone();
    let mut next_seq = existing.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
    let mut invoices = Vec::new();
    let mut skipped = Vec::new();
    for line in &report.lines {
        match plan_tenant(settings, input.spec, line, &existing, rate.as_ref()) {
            Plan::Skip(reason) => skipped.push(Skipped {
                tenant: line.tenant.clone(),
                reason,
            }),
            Plan::Nothing => {}
            Plan::Issue(issue) => {
                let Issue {
                    kind,
                    corrects,
                    net,
                    buyer,
                    rate,
                } = *issue;
                let number = document::number(&settings.number, month, next_seq);
                let corrects_id = corrects.as_ref().map(|(id, _)| *id);
                let inv = Invoice {
                    number,
                    seq: next_seq,
                    kind,
                    corrects: corrects.map(|(_, c)| c),
                    month,
                    seller: settings.seller.clone(),
                    buyer,
                    issue_date: input.today,
                    created_at: input.now,
                    currency: settings.currency,
                    vat_rate: settings.vat_rate,
                    line: settings.line.clone(),
                    amounts: Amounts::of(net, settings.vat_rate, rate.as_ref()),
                    rate,
                };
                next_seq += 1;
                invoices.push((inv, corrects_id));
            }
        }
    }
    let docs = check_all(invoices.iter().map(|(i, _)| i))?;
    let mut drafted = Vec::new();
    for ((inv, corrects), (_, xml)) in invoices.iter().zip(docs) {
        let id = locked
            .insert(&new_invoice(inv, *corrects, xml, input.actor))
            .await?;
        drafted.push(id);
    }
    let rows = locked.read(&drafted).await?;
    if !input.dry_run {
        locked.commit().await?;
    }
    Ok(DraftReport {
        month,
        drafted: rows,
        dry_run: input.dry_run,
        skipped,
        existing: existing.len(),
    })
}

/// The art. 31a rate a USD invoice of `month` converts its VAT with.
async fn vat_rate(
    store: &Store,
    currency: InvoiceCurrency,
    month: Month,
) -> Result<Option<VatRate>, InvoiceError> {
    if currency == InvoiceCurrency::Pln {
        return Ok(None);
    }
    let day = rate_day(month);
    let r = store
        .rate_on(RateTable::A, day)
        .await?
        .ok_or(InvoiceError::NoRate {
            day,
            tax_point: month.last_day(),
        })?;
    Ok(Some(VatRate {
        rate: r.rate,
        date: r.effective_date,
        table_no: r.table_no,
    }))
}

/// Renders and checks every invoice: NIPs, arithmetic, then the schema in one run.
pub fn check_all<'a>(
    invoices: impl Iterator<Item = &'a Invoice>,
) -> Result<Vec<(String, String)>, InvoiceError> {
    let mut docs = Vec::new();
    for inv in invoices {
        inv.check()?;
        docs.push((inv.number.clone(), fa3::render(inv)));
    }
    schema::validate(&docs)?;
    Ok(docs)
}

fn new_invoice(inv: &Invoice, corrects: Option<i64>, xml: String, actor: &str) -> NewInvoice {
    NewInvoice {
        month: inv.month.first_day(),
        seq: inv.seq,
        number: inv.number.clone(),
        kind: inv.kind.code(),
        corrects,
        tenant_id: inv.buyer.tenant.clone(),
        buyer_nip: inv.buyer.nip.clone(),
        buyer_name: inv.buyer.name.clone(),
        issue_date: inv.issue_date,
        currency: inv.currency.as_str(),
        vat_rate: inv.vat_rate as i32,
        net: inv.amounts.net,
        vat: inv.amounts.vat,
        gross: inv.amounts.gross,
        rate: inv.rate.as_ref().map(|r| r.rate),
        rate_date: inv.rate.as_ref().map(|r| r.date),
        rate_table_no: inv.rate.as_ref().map(|r| r.table_no.clone()),
        vat_pln: inv.amounts.vat_pln,
        xml_sha256: crate::crypto::sha256_hex(xml.as_bytes()),
        xml,
        created_by: actor.to_string(),
    }
}

enum Plan {
    Skip(String),
    Nothing,
    Issue(Box<Issue>),
}

/// An invoice to make for a tenant: plain, or correcting the one with that id.
struct Issue {
    kind: Kind,
    corrects: Option<(i64, Corrected)>,
    net: Decimal,
    buyer: Buyer,
    rate: Option<VatRate>,
}

/// What the month owes now in the invoice's currency: the frozen figure plus what
/// arrived after the close (PLN at the rate the month was closed with).
fn owed(currency: InvoiceCurrency, line: &Line) -> Result<Decimal, String> {
    let adj = line.adjustment.as_ref();
    match currency {
        InvoiceCurrency::Usd => Ok(money::round(
            line.client_cost + adj.map_or(Decimal::ZERO, |a| a.client_cost),
            2,
        )),
        InvoiceCurrency::Pln => {
            let frozen = if line.tokens == 0 && line.client_cost.is_zero() {
                Some(Decimal::ZERO)
            } else {
                line.client_cost_pln
            };
            let late = match adj {
                None => Some(Decimal::ZERO),
                Some(a) if a.client_cost.is_zero() => Some(Decimal::ZERO),
                Some(a) => a.client_cost_pln,
            };
            match (frozen, late) {
                (Some(f), Some(l)) => Ok(f + l),
                _ => Err("the month was closed without a PLN rate: invoice it in USD, or bill it by hand".into()),
            }
        }
    }
}

fn plan_tenant(
    settings: &InvoicingSpec,
    spec: &FleetSpec,
    line: &Line,
    existing: &[InvoiceRow],
    rate: Option<&VatRate>,
) -> Plan {
    let Some(tenant) = spec.tenants.iter().find(|t| t.id == line.tenant) else {
        return Plan::Skip("not in the spec: no buyer data".into());
    };
    let Some(nip) = &tenant.nip else {
        return Plan::Skip("no `billing.nip`: not invoiced".into());
    };
    let owed = match owed(settings.currency, line) {
        Ok(o) => o,
        Err(why) => return Plan::Skip(why),
    };
    let mine: Vec<&InvoiceRow> = existing
        .iter()
        .filter(|r| r.tenant_id == tenant.id)
        .collect();
    let invoiced: Decimal = mine.iter().map(|r| r.net).sum();
    let buyer = Buyer {
        tenant: tenant.id.clone(),
        nip: crate::spec::nip_digits(nip),
        name: tenant.name.clone(),
        address: tenant.address.clone(),
    };
    let original = mine.iter().find(|r| r.kind == "VAT");
    match original {
        None if owed <= Decimal::ZERO => Plan::Skip("nothing to bill this month".into()),
        None => Plan::Issue(Box::new(Issue {
            kind: Kind::Vat,
            corrects: None,
            net: owed,
            buyer,
            rate: rate.cloned(),
        })),
        Some(_) if owed == invoiced => Plan::Nothing,
        Some(o) if o.currency != settings.currency.as_str() => Plan::Skip(format!(
            "{} is in {}, the spec now says {}: correct it by hand",
            o.number,
            o.currency,
            settings.currency.as_str()
        )),
        Some(o) if o.state != "accepted" => Plan::Skip(format!(
            "{} {} since {}: its correction waits until KSeF has accepted it (`controller invoices send`)",
            money::round(owed - invoiced, 2),
            o.currency,
            o.number
        )),
        Some(o) => Plan::Issue(Box::new(Issue {
            kind: Kind::Kor,
            corrects: Some((
                o.id,
                Corrected {
                    number: o.number.clone(),
                    issue_date: o.issue_date,
                    ksef_number: o.ksef_number.clone(),
                },
            )),
            net: owed - invoiced,
            buyer,
            // A correction converts at the corrected invoice's rate (same tax point).
            rate: match (o.rate, o.rate_date, &o.rate_table_no) {
                (Some(rate), Some(date), Some(no)) => Some(VatRate {
                    rate,
                    date,
                    table_no: no.clone(),
                }),
                _ => None,
            },
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::document::*;
    use super::*;
    use crate::spec::Party;

    fn invoice(currency: InvoiceCurrency, kind: Kind) -> Invoice {
        let rate = (currency == InvoiceCurrency::Usd).then(|| VatRate {
            rate: "3.6512".parse().unwrap(),
            date: NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(),
            table_no: "230/A/NBP/2026".into(),
        });
        Invoice {
            number: "FV/2026/11/1".into(),
            seq: 1,
            kind,
            corrects: (kind == Kind::Kor).then(|| Corrected {
                number: "FV/2026/11/0".into(),
                issue_date: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
                ksef_number: Some("5260250274-20261201-0A1B2C3D4E5F-00".into()),
            }),
            month: "2026-11".parse().unwrap(),
            seller: Party {
                nip: "5260250274".into(),
                name: "mAI Sp. z o.o.".into(),
                address: "ul. Przykładowa 1, 00-001 Warszawa".into(),
            },
            buyer: Buyer {
                tenant: "nowak".into(),
                nip: "7740001454".into(),
                name: "Nowak & <Synowie> \"S.A.\"\u{7}".into(),
                address: Some("ul. Długa 5, 80-001 Gdańsk".into()),
            },
            issue_date: NaiveDate::from_ymd_opt(2026, 12, 7).unwrap(),
            created_at: "2026-12-07T10:00:00Z".parse().unwrap(),
            currency,
            vat_rate: 23,
            line: "Dostęp do modeli AI — {month}".into(),
            amounts: Amounts::of("211.37".parse().unwrap(), 23, rate.as_ref()),
            rate,
        }
    }

    /// Needs `xmllint` (libxml2-utils): the official schema is the judge.
    #[test]
    fn drafts_validate_against_the_official_schema() {
        let invoices = [
            invoice(InvoiceCurrency::Pln, Kind::Vat),
            invoice(InvoiceCurrency::Usd, Kind::Vat),
            invoice(InvoiceCurrency::Pln, Kind::Kor),
        ];
        let docs = check_all(invoices.iter()).expect("valid drafts");
        assert!(docs[0]
            .1
            .contains("<Nazwa>Nowak &amp; &lt;Synowie&gt; &quot;S.A.&quot; </Nazwa>"));
        assert!(docs[0]
            .1
            .contains("<P_7>Dostęp do modeli AI — listopad 2026</P_7>"));
        assert!(
            docs[1].1.contains("<P_14_1W>177.52</P_14_1W>"),
            "{}",
            docs[1].1
        );
        assert!(docs[1].1.contains("<KursWaluty>3.6512</KursWaluty>"));
        assert!(docs[2].1.contains(
            "<NrKSeFFaKorygowanej>5260250274-20261201-0A1B2C3D4E5F-00</NrKSeFFaKorygowanej>"
        ));
        // What the schema refuses is named per draft.
        let broken = docs[0].1.replace("<GV>2</GV>", "");
        match schema::validate(&[("FV/2026/11/9".into(), broken)]) {
            Err(schema::SchemaError::Invalid(bad)) => {
                assert_eq!(bad[0].0, "FV/2026/11/9");
                assert!(bad[0].1.contains("GV"), "{}", bad[0].1);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_the_schema_lets_through_is_refused() {
        let mut bad_nip = invoice(InvoiceCurrency::Pln, Kind::Vat);
        bad_nip.buyer.nip = "7740001455".into();
        assert!(matches!(
            bad_nip.check(),
            Err(DocumentError::Nip { who: "buyer's", .. })
        ));
        let mut bad_sum = invoice(InvoiceCurrency::Pln, Kind::Vat);
        bad_sum.amounts.gross += Decimal::new(1, 2);
        assert!(matches!(
            bad_sum.check(),
            Err(DocumentError::Arithmetic { .. })
        ));
        let mut bad_vat = invoice(InvoiceCurrency::Usd, Kind::Vat);
        bad_vat.amounts.vat_pln = Some(Decimal::new(17753, 2));
        assert!(bad_vat.check().is_err());
    }
}
