//! The `invoicing:` section: the seller, the number template, currency, VAT rate,
//! the line's text and KSeF. Every mistake located, all at once, as elsewhere.

use super::*;
use crate::spec::{InvoiceCurrency, InvoicingSpec, KsefEnvironment, KsefSpec, Party};

const INVOICING_KEYS: &[&str] = &["seller", "number", "currency", "vat_rate", "line", "ksef"];
const SELLER_KEYS: &[&str] = &["nip", "name", "address"];
const KSEF_KEYS: &[&str] = &["environment", "token"];
const NUMBER_FIELDS: &[&str] = &["{yyyy}", "{mm}", "{seq}"];
/// The VAT rates an invoice line may carry here, each with its FA(3) fields.
pub const VAT_RATES: &[u32] = &[23, 8, 5];

/// `FV/{yyyy}/{mm}/{seq}`: every field known, and all three there (KSeF refuses a
/// number the seller used before, so a number must name its month).
pub fn number_template(t: &str) -> Result<(), Invalid> {
    let mut rest = t.to_string();
    for f in NUMBER_FIELDS {
        if !rest.contains(f) {
            return Err(format!("the template must contain {f} (numbers run per month: {{yyyy}}, {{mm}} and {{seq}} make each unique)").into());
        }
        rest = rest.replace(f, "");
    }
    if rest.contains(['{', '}']) {
        return Err(format!(
            "unknown field in `{t}`: the fields are {}",
            NUMBER_FIELDS.join(", ")
        )
        .into());
    }
    if t.len() > 200 {
        return Err("keep the template under 200 characters (FA(3) takes 256 for P_2)".into());
    }
    Ok(())
}

/// Text of an invoice field: one line, 1 to 256 characters (FA(3) `TZnakowy`).
pub fn invoice_text(t: &str) -> Result<(), Invalid> {
    if t.trim().is_empty() {
        return Err("write some text".into());
    }
    if t.chars().count() > 256 || t.chars().any(char::is_control) {
        return Err("one line of at most 256 characters".into());
    }
    Ok(())
}

impl Loader<'_> {
    pub(super) fn invoicing(&mut self, node: &Node) -> Option<InvoicingSpec> {
        let map = self.mapping(node, "`invoicing`")?;
        self.keys(map, INVOICING_KEYS, "invoicing");
        let seller = self.seller(map);
        let number = self
            .scalar(map, "number", "invoicing.number")
            .map(|(t, at)| {
                self.check(at, "invoicing.number", t, number_template(t))
                    .map(|()| t.to_string())
            })
            .unwrap_or_else(|| Some("FV/{yyyy}/{mm}/{seq}".to_string()));
        let currency = match self.scalar(map, "currency", "invoicing.currency") {
            Some((c, at)) => {
                let parsed = c.parse::<InvoiceCurrency>().map_err(|_| {
                    "write PLN, or USD (VAT then also in PLN at NBP table A, art. 31a)".to_string()
                });
                self.check(at, "invoicing.currency", c, parsed)
            }
            None => Some(InvoiceCurrency::Pln),
        };
        let vat_rate = match self.scalar(map, "vat_rate", "invoicing.vat_rate") {
            Some((v, at)) => {
                let parsed = v
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|r| VAT_RATES.contains(r))
                    .ok_or_else(|| "write 23, 8 or 5 (percent)".to_string());
                self.check(at, "invoicing.vat_rate", v, parsed)
            }
            None => Some(23),
        };
        let line = match self.scalar(map, "line", "invoicing.line") {
            Some((l, at)) => self
                .check(at, "invoicing.line", l, invoice_text(l))
                .map(|()| l.to_string()),
            None => Some("Dostęp do modeli AI — {month}".to_string()),
        };
        let ksef = map.get_node("ksef").and_then(|n| self.ksef(n));
        Some(InvoicingSpec {
            seller: seller?,
            number: number?,
            currency: currency?,
            vat_rate: vat_rate?,
            line: line?,
            ksef,
        })
    }

    fn seller(&mut self, map: &MarkedMappingNode) -> Option<Party> {
        let Some(s) = map.get_node("seller") else {
            self.diag(
                pos(map.span()),
                "missing `invoicing.seller`",
                Some("e.g. `seller: { nip: \"5260250274\", name: \"mAI Sp. z o.o.\", address: \"ul. Przykładowa 1, 00-001 Warszawa\" }`".into()),
            );
            return None;
        };
        let s = self.mapping(s, "`invoicing.seller`")?;
        self.keys(s, SELLER_KEYS, "invoicing.seller");
        let nip = self
            .required(
                s,
                "nip",
                "invoicing.seller.nip",
                "the seller's NIP, 10 digits",
            )
            .and_then(|(n, at)| {
                self.check(at, "invoicing.seller.nip", n, checks::nip(n))
                    .map(|()| checks::nip_digits(n))
            });
        let name = self
            .required(
                s,
                "name",
                "invoicing.seller.name",
                "the seller's name as registered",
            )
            .and_then(|(n, at)| {
                self.check(at, "invoicing.seller.name", n, invoice_text(n))
                    .map(|()| n.to_string())
            });
        let address = self
            .required(
                s,
                "address",
                "invoicing.seller.address",
                "one line: street, postal code and city",
            )
            .and_then(|(a, at)| {
                self.check(at, "invoicing.seller.address", a, invoice_text(a))
                    .map(|()| a.to_string())
            });
        Some(Party {
            nip: nip?,
            name: name?,
            address: address?,
        })
    }

    fn ksef(&mut self, node: &Node) -> Option<KsefSpec> {
        let k = self.mapping(node, "`invoicing.ksef`")?;
        self.keys(k, KSEF_KEYS, "invoicing.ksef");
        let environment = match self.scalar(k, "environment", "invoicing.ksef.environment") {
            Some((e, at)) => {
                let parsed = e
                    .parse::<KsefEnvironment>()
                    .map_err(|_| "write test, demo or production".to_string());
                self.check(at, "invoicing.ksef.environment", e, parsed)
            }
            None => {
                self.diag(
                    pos(k.span()),
                    "missing `invoicing.ksef.environment`",
                    Some("write `environment: test` until invoices should count".into()),
                );
                None
            }
        };
        let (text, at) = self.required(
            k,
            "token",
            "invoicing.ksef.token",
            "the KSeF token, e.g. `token: ${file:/etc/mai-fleet/ksef-token}`",
        )?;
        let Some(reference) = secret::parse_reference(text) else {
            self.diag(
                at,
                "`invoicing.ksef.token` is written inline",
                Some("keep the token out of the file: use ${env:VAR} or ${file:PATH}".into()),
            );
            return None;
        };
        let token = match secret::resolve(&reference, &self.base_dir, self.env) {
            Ok(t) => t,
            Err(problem) => {
                self.diag(at, format!("`invoicing.ksef.token`: {problem}"), None);
                return None;
            }
        };
        Some(KsefSpec {
            environment: environment?,
            token: ApiKey::new(token),
        })
    }
}
