//! An [`Invoice`] as an FA(3) document (schema 1-0E): UTF-8 without a BOM, no
//! processing instruction but the XML declaration, every text escaped. Elements come
//! in the schema's order; `invoices::schema` checks the result.

use rust_decimal::Decimal;

use super::document::{Invoice, Kind};
use crate::spec::InvoiceCurrency;

pub const NAMESPACE: &str = "http://crd.gov.pl/wzor/2025/06/25/13775/";

/// Text as XML character data: markup escaped, characters XML 1.0 cannot carry
/// (controls) replaced by a space. Tenants' names are hostile input.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(' '),
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// `TKwotowy`: two decimals, a dot, no exponent.
fn amount(d: Decimal) -> String {
    format!("{:.2}", d.round_dp(2))
}

/// The FA(3) fields of a VAT rate: (net, VAT, VAT in PLN) suffix.
fn rate_fields(vat_rate: u32) -> &'static str {
    match vat_rate {
        8 => "2",
        5 => "3",
        _ => "1",
    }
}

struct Xml(String);

impl Xml {
    fn el(&mut self, name: &str, text: &str) {
        self.0
            .push_str(&format!("<{name}>{}</{name}>", escape(text)));
    }
    fn open(&mut self, name: &str) {
        self.0.push_str(&format!("<{name}>"));
    }
    fn close(&mut self, name: &str) {
        self.0.push_str(&format!("</{name}>"));
    }
}

pub fn render(inv: &Invoice) -> String {
    let mut x = Xml(String::with_capacity(4096));
    x.0.push_str(&format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Faktura xmlns=\"{NAMESPACE}\">"
    ));
    x.open("Naglowek");
    x.0.push_str("<KodFormularza kodSystemowy=\"FA (3)\" wersjaSchemy=\"1-0E\">FA</KodFormularza>");
    x.el("WariantFormularza", "3");
    x.el(
        "DataWytworzeniaFa",
        &inv.created_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    );
    x.el(
        "SystemInfo",
        concat!("mai-fleet ", env!("CARGO_PKG_VERSION")),
    );
    x.close("Naglowek");

    x.open("Podmiot1");
    party_data(
        &mut x,
        &inv.seller.nip,
        &inv.seller.name,
        Some(&inv.seller.address),
    );
    x.close("Podmiot1");
    x.open("Podmiot2");
    party_data(
        &mut x,
        &inv.buyer.nip,
        &inv.buyer.name,
        inv.buyer.address.as_deref(),
    );
    x.el("JST", "2");
    x.el("GV", "2");
    x.close("Podmiot2");

    fa(&mut x, inv);
    x.close("Faktura");
    x.0
}

/// A party's identification and (Polish) address.
fn party_data(x: &mut Xml, nip: &str, name: &str, address: Option<&str>) {
    x.open("DaneIdentyfikacyjne");
    x.el("NIP", nip);
    x.el("Nazwa", name);
    x.close("DaneIdentyfikacyjne");
    if let Some(a) = address {
        x.open("Adres");
        x.el("KodKraju", "PL");
        x.el("AdresL1", a);
        x.close("Adres");
    }
}

fn fa(x: &mut Xml, inv: &Invoice) {
    let a = &inv.amounts;
    let n = rate_fields(inv.vat_rate);
    x.open("Fa");
    x.el("KodWaluty", inv.currency.as_str());
    x.el("P_1", &inv.issue_date.to_string());
    x.el("P_2", &inv.number);
    x.open("OkresFa");
    x.el("P_6_Od", &inv.month.first_day().to_string());
    x.el("P_6_Do", &inv.month.last_day().to_string());
    x.close("OkresFa");
    x.el(&format!("P_13_{n}"), &amount(a.net));
    x.el(&format!("P_14_{n}"), &amount(a.vat));
    if let (InvoiceCurrency::Usd, Some(pln)) = (inv.currency, a.vat_pln) {
        x.el(&format!("P_14_{n}W"), &amount(pln));
    }
    x.el("P_15", &amount(a.gross));
    x.open("Adnotacje");
    x.el("P_16", "2");
    x.el("P_17", "2");
    x.el("P_18", "2");
    x.el("P_18A", "2");
    x.0.push_str("<Zwolnienie><P_19N>1</P_19N></Zwolnienie>");
    x.0.push_str("<NoweSrodkiTransportu><P_22N>1</P_22N></NoweSrodkiTransportu>");
    x.el("P_23", "2");
    x.0.push_str("<PMarzy><P_PMarzyN>1</P_PMarzyN></PMarzy>");
    x.close("Adnotacje");
    x.el("RodzajFaktury", inv.kind.code());
    if let (Kind::Kor, Some(c)) = (inv.kind, &inv.corrects) {
        x.el(
            "PrzyczynaKorekty",
            "Zużycie zarejestrowane po zamknięciu okresu rozliczeniowego",
        );
        // 1: the correction takes effect at the corrected invoice's tax point.
        x.el("TypKorekty", "1");
        x.open("DaneFaKorygowanej");
        x.el("DataWystFaKorygowanej", &c.issue_date.to_string());
        x.el("NrFaKorygowanej", &c.number);
        match &c.ksef_number {
            Some(k) => {
                x.el("NrKSeF", "1");
                x.el("NrKSeFFaKorygowanej", k);
            }
            None => x.el("NrKSeFN", "1"),
        }
        x.close("DaneFaKorygowanej");
    }
    x.open("FaWiersz");
    x.el("NrWierszaFa", "1");
    x.el("P_7", &inv.line_text());
    x.el("P_8A", "usł.");
    x.el("P_8B", "1");
    x.el("P_9A", &amount(a.net));
    x.el("P_11", &amount(a.net));
    x.el("P_12", &inv.vat_rate.to_string());
    if let Some(r) = &inv.rate {
        x.el("KursWaluty", &r.rate.normalize().to_string());
    }
    x.close("FaWiersz");
    x.close("Fa");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_stays_text() {
        assert_eq!(
            escape("A&B <x/> \"q\" 'a'\u{0}\n"),
            "A&amp;B &lt;x/&gt; &quot;q&quot; &apos;a&apos;  "
        );
        assert_eq!(amount("12.5".parse().unwrap()), "12.50");
        assert_eq!(amount("-0.1".parse().unwrap()), "-0.10");
    }
}
