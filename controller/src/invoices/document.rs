//! One invoice as the fleet issues it: the parties, the period, one line, the
//! amounts rounded once by one rule, and — for a correction — the invoice it
//! corrects. [`Invoice::check`] is what the schema cannot see: NIP checksums and
//! the arithmetic, to the grosz.

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::billing::money::round;
use crate::billing::Month;
use crate::spec::{check_nip, InvoiceCurrency, Party};

/// A plain invoice, or a correction of one (`KOR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Kind {
    #[serde(rename = "VAT")]
    Vat,
    #[serde(rename = "KOR")]
    Kor,
}

impl Kind {
    pub fn code(self) -> &'static str {
        match self {
            Kind::Vat => "VAT",
            Kind::Kor => "KOR",
        }
    }
}

/// What a correction names of the invoice it corrects.
#[derive(Debug, Clone, Serialize)]
pub struct Corrected {
    pub number: String,
    pub issue_date: NaiveDate,
    /// Its KSeF number (a correction waits until the original is accepted).
    pub ksef_number: Option<String>,
}

/// The buyer: a tenant with its NIP; the address is optional in FA(3).
#[derive(Debug, Clone, Serialize)]
pub struct Buyer {
    pub tenant: String,
    pub nip: String,
    pub name: String,
    pub address: Option<String>,
}

/// NBP table A mid of the last business day before the tax point (art. 31a).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VatRate {
    pub rate: Decimal,
    pub date: NaiveDate,
    pub table_no: String,
}

/// An invoice's amounts: net of its one line, VAT on the total, gross, and for a
/// foreign-currency invoice the VAT in PLN. Each rounded once, halves away from zero.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Amounts {
    pub net: Decimal,
    pub vat: Decimal,
    pub gross: Decimal,
    pub vat_pln: Option<Decimal>,
}

impl Amounts {
    /// From the line's net (already to the cent or grosz) and the VAT rate in percent.
    pub fn of(net: Decimal, vat_rate: u32, rate: Option<&VatRate>) -> Self {
        let net = round(net, 2);
        let vat = round(net * Decimal::from(vat_rate) / Decimal::from(100), 2);
        Amounts {
            net,
            vat,
            gross: net + vat,
            vat_pln: rate.map(|r| round(vat * r.rate, 2)),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Invoice {
    pub number: String,
    pub seq: i32,
    pub kind: Kind,
    pub corrects: Option<Corrected>,
    pub month: Month,
    pub seller: Party,
    pub buyer: Buyer,
    pub issue_date: NaiveDate,
    /// `DataWytworzeniaFa`.
    pub created_at: DateTime<Utc>,
    pub currency: InvoiceCurrency,
    pub vat_rate: u32,
    pub line: String,
    pub amounts: Amounts,
    pub rate: Option<VatRate>,
}

/// What is wrong with a draft; it is then not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocumentError {
    #[error("{number}: the {who} NIP {nip} is not valid ({why})")]
    Nip {
        number: String,
        who: &'static str,
        nip: String,
        why: String,
    },
    #[error("{number}: {what}")]
    Arithmetic { number: String, what: String },
}

impl Invoice {
    /// The line's text with `{month}` filled in, in Polish ("listopad 2026").
    pub fn line_text(&self) -> String {
        self.line.replace("{month}", &polish_month(self.month))
    }

    /// NIP checksums and the arithmetic: what the FA(3) schema lets through.
    pub fn check(&self) -> Result<(), DocumentError> {
        for (who, nip) in [("seller's", &self.seller.nip), ("buyer's", &self.buyer.nip)] {
            if let Err(e) = check_nip(nip) {
                return Err(DocumentError::Nip {
                    number: self.number.clone(),
                    who,
                    nip: nip.clone(),
                    why: e.0,
                });
            }
        }
        let a = &self.amounts;
        let wrong = |what: String| {
            Err(DocumentError::Arithmetic {
                number: self.number.clone(),
                what,
            })
        };
        if a.net.scale() > 2 || a.vat.scale() > 2 || a.gross.scale() > 2 {
            return wrong(format!(
                "amounts have more than 2 decimals ({} {} {})",
                a.net, a.vat, a.gross
            ));
        }
        let expected = Amounts::of(a.net, self.vat_rate, self.rate.as_ref());
        if a.vat != expected.vat {
            return wrong(format!(
                "VAT {} is not {} % of {} rounded once ({})",
                a.vat, self.vat_rate, a.net, expected.vat
            ));
        }
        if a.gross != a.net + a.vat {
            return wrong(format!(
                "P_15 {} is not P_13 {} + P_14 {}",
                a.gross, a.net, a.vat
            ));
        }
        match (self.currency, &self.rate, a.vat_pln) {
            (InvoiceCurrency::Pln, None, None) => {}
            (InvoiceCurrency::Usd, Some(_), Some(pln)) if Some(pln) == expected.vat_pln => {}
            _ => {
                return wrong(format!(
                    "a {} invoice has {} rate and VAT in PLN {:?} (expected {:?})",
                    self.currency.as_str(),
                    if self.rate.is_some() { "a" } else { "no" },
                    a.vat_pln,
                    expected.vat_pln
                ))
            }
        }
        if self.kind == Kind::Kor && self.corrects.is_none() {
            return wrong("a correction names no corrected invoice".into());
        }
        if self.kind == Kind::Vat && a.net <= Decimal::ZERO {
            return wrong(format!("an invoice of {} net bills nothing", a.net));
        }
        Ok(())
    }
}

/// The invoice number from the template: `FV/{yyyy}/{mm}/{seq}`.
pub fn number(template: &str, month: Month, seq: i32) -> String {
    let first = month.first_day();
    template
        .replace("{yyyy}", &first.format("%Y").to_string())
        .replace("{mm}", &first.format("%m").to_string())
        .replace("{seq}", &seq.to_string())
}

/// "listopad 2026": the month as a Polish invoice names it.
pub fn polish_month(month: Month) -> String {
    use chrono::Datelike;
    const NAMES: [&str; 12] = [
        "styczeń",
        "luty",
        "marzec",
        "kwiecień",
        "maj",
        "czerwiec",
        "lipiec",
        "sierpień",
        "wrzesień",
        "październik",
        "listopad",
        "grudzień",
    ];
    let first = month.first_day();
    format!("{} {}", NAMES[first.month0() as usize], first.year())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn amounts_round_once_and_add_up() {
        let a = Amounts::of(d("100.05"), 23, None);
        assert_eq!((a.vat, a.gross), (d("23.01"), d("123.06")));
        // 0.115 × 23 % = 0.02645 → 0.03 (halves away from zero), never 0.02.
        let a = Amounts::of(d("0.115"), 23, None);
        assert_eq!((a.net, a.vat, a.gross), (d("0.12"), d("0.03"), d("0.15")));
        let rate = VatRate {
            rate: d("3.6512"),
            date: NaiveDate::from_ymd_opt(2026, 11, 27).unwrap(),
            table_no: "230/A/NBP/2026".into(),
        };
        let a = Amounts::of(d("211.37"), 23, Some(&rate));
        // VAT 48.6151 → 48.62 USD; × 3.6512 = 177.521344 → 177.52 PLN.
        assert_eq!((a.vat, a.vat_pln), (d("48.62"), Some(d("177.52"))));
    }

    #[test]
    fn numbers_and_months() {
        let m: Month = "2026-11".parse().unwrap();
        assert_eq!(number("FV/{yyyy}/{mm}/{seq}", m, 2), "FV/2026/11/2");
        assert_eq!(polish_month(m), "listopad 2026");
    }
}
