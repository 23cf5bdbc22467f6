//! The invoices page: a month's KSeF invoices and their state, each readable, its
//! FA(3) XML and KSeF receipt downloadable; sending to KSeF for admins (when `serve`
//! was given the spec with `invoicing.ksef`).

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;

use super::auth::Authed;
use super::tenants::parse_month;
use super::view::Chrome;
use super::{render, AppState, WebError};
use crate::billing::fleet_today;
use crate::billing::money::{format_in, format_pln};
use crate::invoices::ksef::{base_url, Ksef};
use crate::invoices::send::{send as send_invoices, SendError, SendOptions};
use crate::store::invoices::InvoiceRow;
use crate::store::StoreError;

#[derive(Deserialize)]
pub struct MonthQuery {
    month: Option<String>,
}

#[derive(Deserialize)]
pub struct NumberQuery {
    number: String,
}

pub struct RowView {
    pub number: String,
    /// The number as a query value (`FV%2F2026%2F11%2F1`).
    pub query: String,
    pub kind: String,
    pub tenant: String,
    pub buyer: String,
    pub net: String,
    pub vat: String,
    pub gross: String,
    pub state: String,
    pub ksef_number: String,
    pub detail: String,
    pub has_upo: bool,
}

fn view(r: &InvoiceRow) -> RowView {
    RowView {
        number: r.number.clone(),
        query: url::form_urlencoded::byte_serialize(r.number.as_bytes()).collect(),
        kind: r.kind.clone(),
        tenant: r.tenant_id.clone(),
        buyer: format!("{} (NIP {})", r.buyer_name, r.buyer_nip),
        net: format_in(&r.currency, r.net),
        vat: format_in(&r.currency, r.vat),
        gross: format_in(&r.currency, r.gross),
        state: r.state.clone(),
        ksef_number: r.ksef_number.clone().unwrap_or_default(),
        detail: match (r.state.as_str(), r.ksef_code, &r.ksef_text) {
            ("rejected", Some(c), Some(t)) => format!("{c} {t}"),
            _ => String::new(),
        },
        has_upo: r.has_upo,
    }
}

#[derive(Template)]
#[template(path = "invoices.html")]
struct InvoicesPage {
    chrome: Chrome,
    month: String,
    prev_month: String,
    next_month: String,
    rows: Vec<RowView>,
    can_send: bool,
    unsent: usize,
    send_note: String,
}

pub async fn page(
    State(state): State<AppState>,
    authed: Authed,
    Query(q): Query<MonthQuery>,
) -> Result<Response, WebError> {
    // Invoices are of closed months: the page opens on the last one.
    let month = match q.month.as_deref() {
        Some(m) => parse_month(Some(m))?,
        None => crate::billing::Month::of(fleet_today()).prev(),
    };
    let rows = state.store.invoices(Some(month.first_day())).await?;
    let ksef = state
        .spec
        .as_ref()
        .and_then(|s| s.invoicing.as_ref())
        .and_then(|i| i.ksef.as_ref());
    let unsent = rows.iter().filter(|r| r.state != "accepted").count();
    render(&InvoicesPage {
        can_send: ksef.is_some() && authed.role == "admin" && unsent > 0,
        send_note: match (ksef, authed.role.as_str()) {
            (None, _) => "Sending needs `serve --spec` with `invoicing.ksef`; `controller invoices send` does it from a shell.".into(),
            (Some(k), "admin") => format!("KSeF environment: {}", k.environment.as_str()),
            (Some(_), _) => "Only an admin may send invoices to KSeF.".into(),
        },
        chrome: Chrome {
            user: authed.user,
            csrf: authed.csrf,
            nav: "invoices",
        },
        month: month.to_string(),
        prev_month: month.prev().to_string(),
        next_month: month.next().to_string(),
        rows: rows.iter().map(view).collect(),
        unsent,
    })
}

#[derive(Template)]
#[template(path = "invoice.html")]
struct InvoicePage {
    chrome: Chrome,
    row: RowView,
    title: String,
    issue_date: String,
    period: String,
    currency: String,
    vat_rate: i32,
    rate: String,
    xml: String,
    sha256: String,
    month: String,
}

async fn find(
    state: &AppState,
    number: &str,
) -> Result<(InvoiceRow, String, Option<String>), WebError> {
    state
        .store
        .invoice(number)
        .await?
        .ok_or_else(|| WebError::NotFound(format!("no invoice numbered {number}")))
}

pub async fn show(
    State(state): State<AppState>,
    authed: Authed,
    Query(q): Query<NumberQuery>,
) -> Result<Response, WebError> {
    let (row, xml, _) = find(&state, &q.number).await?;
    let month = crate::billing::Month::of(row.month);
    render(&InvoicePage {
        chrome: Chrome {
            user: authed.user,
            csrf: authed.csrf,
            nav: "invoices",
        },
        title: if row.kind == "KOR" {
            "Faktura korygująca"
        } else {
            "Faktura VAT"
        }
        .into(),
        issue_date: row.issue_date.to_string(),
        period: format!("{} – {}", month.first_day(), month.last_day()),
        currency: row.currency.clone(),
        vat_rate: row.vat_rate,
        rate: match (row.rate, row.rate_date, &row.rate_table_no, row.vat_pln) {
            (Some(r), Some(d), Some(no), Some(pln)) => format!(
                "{r} PLN/USD (NBP table {no} of {d}); VAT in PLN {}",
                format_pln(pln)
            ),
            _ => String::new(),
        },
        sha256: row.xml_sha256.clone(),
        month: month.to_string(),
        row: view(&row),
        xml,
    })
}

fn xml_download(body: String, name: &str) -> Response {
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml; charset=utf-8"),
    );
    let file: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}.xml\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

pub async fn xml(
    State(state): State<AppState>,
    _authed: Authed,
    Query(q): Query<NumberQuery>,
) -> Result<Response, WebError> {
    let (_, xml, _) = find(&state, &q.number).await?;
    Ok(xml_download(xml, &q.number))
}

pub async fn upo(
    State(state): State<AppState>,
    _authed: Authed,
    Query(q): Query<NumberQuery>,
) -> Result<Response, WebError> {
    let (_, _, upo) = find(&state, &q.number).await?;
    let upo =
        upo.ok_or_else(|| WebError::NotFound(format!("{} has no KSeF receipt yet", q.number)))?;
    Ok(xml_download(upo, &format!("UPO-{}", q.number)))
}

#[derive(Deserialize)]
pub struct SendForm {
    csrf: String,
    month: String,
}

pub async fn send(
    State(state): State<AppState>,
    authed: Authed,
    Form(f): Form<SendForm>,
) -> Result<Response, WebError> {
    authed.check_csrf(&f.csrf)?;
    authed.require_admin()?;
    let month = parse_month(Some(&f.month))?;
    let spec = state.spec.as_ref().ok_or_else(|| {
        WebError::BadRequest("sending needs `serve --spec` with `invoicing.ksef`".into())
    })?;
    let env = spec
        .invoicing
        .as_ref()
        .and_then(|i| i.ksef.as_ref())
        .map(|k| k.environment)
        .ok_or_else(|| WebError::BadRequest("the spec has no `invoicing.ksef`".into()))?;
    let report = send_invoices(
        &state.store,
        spec,
        &Ksef::new(base_url(env)),
        &SendOptions {
            month: Some(month),
            retry_rejected: false,
            wait: std::time::Duration::from_secs(60),
        },
    )
    .await
    .map_err(|e| match e {
        // What the admin can act on is said; the rest goes to the log.
        SendError::Store(StoreError::SendingLocked) | SendError::Ksef(_) | SendError::NoKsef => {
            WebError::BadRequest(e.to_string())
        }
        other => WebError::Internal(other.to_string()),
    })?;
    tracing::info!(user = %authed.user, %month, sent = report.outcomes.len(), "invoices sent to KSeF from the dashboard");
    Ok(Redirect::to(&format!("/invoices?month={month}")).into_response())
}
