//! `invoices send`: the month's drafts to KSeF in one online session, each status
//! read to its end, the KSeF numbers and receipts kept. Idempotent: an accepted
//! invoice is never sent again, one whose status was not yet known is asked about
//! (not resent), and a duplicate KSeF reports is recorded as the invoice KSeF holds.

use std::time::Duration;

use serde::Serialize;

use super::ksef::{InvoiceStatus, Ksef, KsefError, Login};
use super::InvoiceError;
use crate::billing::Month;
use crate::spec::FleetSpec;
use crate::store::invoices::InvoiceRow;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Invoice(#[from] InvoiceError),
    #[error("the spec's `invoicing:` has no `ksef:` (environment and token): nothing can be sent")]
    NoKsef,
    #[error(transparent)]
    Ksef(#[from] KsefError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What happened to one invoice in this run.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub number: String,
    pub tenant: String,
    /// accepted, duplicate (recorded as the invoice KSeF holds), rejected, pending.
    pub result: &'static str,
    pub ksef_number: Option<String>,
    pub code: Option<i64>,
    pub text: Option<String>,
    pub upo: bool,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct SendReport {
    pub outcomes: Vec<Outcome>,
    /// Accepted before this run, receipt kept: left alone.
    pub already_accepted: usize,
    /// Refused before; sent again only with `retry_rejected`.
    pub rejected_before: Vec<String>,
    pub session: Option<String>,
}

impl SendReport {
    /// Not everything is accepted with its receipt: a refusal (now or before), an
    /// answer still pending, a receipt not yet made.
    pub fn failed(&self) -> bool {
        !self.rejected_before.is_empty()
            || self
                .outcomes
                .iter()
                .any(|o| o.result == "rejected" || o.result == "pending" || !o.upo)
    }
}

pub struct SendOptions {
    pub month: Option<Month>,
    pub retry_rejected: bool,
    /// How long one invoice's status (and receipt) is awaited.
    pub wait: Duration,
}

pub async fn send(
    store: &Store,
    spec: &FleetSpec,
    ksef: &Ksef,
    opts: &SendOptions,
) -> Result<SendReport, SendError> {
    let settings = spec.invoicing.as_ref().ok_or(InvoiceError::NotConfigured)?;
    let ksef_spec = settings.ksef.as_ref().ok_or(SendError::NoKsef)?;
    let _sending = store.lock_sending().await?;
    let rows = store.invoices(opts.month.map(Month::first_day)).await?;
    let mut report = SendReport::default();
    let mut to_send: Vec<&InvoiceRow> = Vec::new();
    let mut to_ask: Vec<&InvoiceRow> = Vec::new();
    let mut to_receipt: Vec<&InvoiceRow> = Vec::new();
    for r in rows.iter().rev() {
        match r.state.as_str() {
            "accepted" if r.has_upo => report.already_accepted += 1,
            "accepted" => to_receipt.push(r),
            "sending" => to_ask.push(r),
            "rejected" if !opts.retry_rejected => report.rejected_before.push(r.number.clone()),
            _ => to_send.push(r),
        }
    }
    // Oldest first: an invoice before its correction.
    to_send.sort_by_key(|r| (r.month, r.seq));
    if to_send.is_empty() && to_ask.is_empty() && to_receipt.is_empty() {
        return Ok(report);
    }
    let mut login = ksef.login(&settings.seller.nip, &ksef_spec.token).await?;
    for r in to_ask {
        if let Some(o) = ask(store, ksef, &mut login, r, opts.wait).await? {
            report.outcomes.push(o);
        }
    }
    for r in to_receipt {
        if let Some(o) = receipt_only(store, ksef, &mut login, r, opts.wait).await? {
            report.outcomes.push(o);
        }
    }
    if !to_send.is_empty() {
        send_new(store, ksef, &mut login, &to_send, opts.wait, &mut report).await?;
    }
    Ok(report)
}

/// An invoice handed to KSeF before whose status was not read: asked, not resent.
async fn ask(
    store: &Store,
    ksef: &Ksef,
    login: &mut Login,
    r: &InvoiceRow,
    wait: Duration,
) -> Result<Option<Outcome>, SendError> {
    let (Some(session), Some(reference)) = (&r.ksef_session, &r.ksef_reference) else {
        return Ok(None);
    };
    let st = ksef.final_status(login, session, reference, wait).await?;
    Ok(Some(
        record(store, ksef, login, r, session, st, wait).await?,
    ))
}

/// An accepted invoice whose receipt KSeF had not made yet.
async fn receipt_only(
    store: &Store,
    ksef: &Ksef,
    login: &mut Login,
    r: &InvoiceRow,
    wait: Duration,
) -> Result<Option<Outcome>, SendError> {
    let (Some(session), Some(number)) = (&r.ksef_session, &r.ksef_number) else {
        return Ok(None);
    };
    let upo = receipt(store, ksef, login, r.id, session, number, wait).await?;
    Ok(Some(Outcome {
        number: r.number.clone(),
        tenant: r.tenant_id.clone(),
        result: "accepted",
        ksef_number: Some(number.clone()),
        code: r.ksef_code.map(i64::from),
        text: None,
        upo,
    }))
}

/// Drafts sent in one new session: each handed over, its status read to the end,
/// the session closed, then each recorded with its receipt.
async fn send_new(
    store: &Store,
    ksef: &Ksef,
    login: &mut Login,
    to_send: &[&InvoiceRow],
    wait: Duration,
    report: &mut SendReport,
) -> Result<(), SendError> {
    let session = ksef.open_session(login).await?;
    report.session = Some(session.reference.clone());
    let mut sent = Vec::new();
    for r in to_send {
        let xml = store.invoice_xml(r.id).await?;
        match ksef.send(login, &session, &xml).await {
            Ok(reference) => {
                store
                    .invoice_sending(r.id, &session.reference, &reference)
                    .await?;
                sent.push((*r, reference));
            }
            // KSeF refused this one request: say so, the others go on.
            Err(KsefError::Api { status, detail, .. }) => {
                store
                    .invoice_rejected(r.id, i32::from(status), &detail)
                    .await?;
                report.outcomes.push(Outcome {
                    number: r.number.clone(),
                    tenant: r.tenant_id.clone(),
                    result: "rejected",
                    ksef_number: None,
                    code: Some(i64::from(status)),
                    text: Some(detail),
                    upo: false,
                });
            }
            Err(e) => return Err(e.into()),
        }
    }
    let mut statuses = Vec::new();
    for (r, reference) in &sent {
        let st = ksef
            .final_status(login, &session.reference, reference, wait)
            .await?;
        statuses.push((*r, st));
    }
    // The receipts are made once the session is closed.
    ksef.close(login, &session.reference).await?;
    for (r, st) in statuses {
        let o = record(store, ksef, login, r, &session.reference, st, wait).await?;
        report.outcomes.push(o);
    }
    Ok(())
}

/// Records a final (or still pending) status, and the receipt of an accepted one.
async fn record(
    store: &Store,
    ksef: &Ksef,
    login: &mut Login,
    r: &InvoiceRow,
    session: &str,
    st: InvoiceStatus,
    wait: Duration,
) -> Result<Outcome, SendError> {
    let mut o = Outcome {
        number: r.number.clone(),
        tenant: r.tenant_id.clone(),
        result: "pending",
        ksef_number: None,
        code: Some(st.code),
        text: Some(st.description.clone()),
        upo: false,
    };
    let accepted = match (st.code, &st.ksef_number, &st.original_ksef_number) {
        _ if st.pending() => None,
        (200, Some(n), _) => Some(("accepted", n.clone(), session.to_string())),
        (440, _, Some(n)) => Some((
            "duplicate",
            n.clone(),
            st.original_session
                .clone()
                .unwrap_or_else(|| session.to_string()),
        )),
        _ => {
            store
                .invoice_rejected(r.id, st.code as i32, &st.description)
                .await?;
            o.result = "rejected";
            None
        }
    };
    if let Some((result, number, in_session)) = accepted {
        store
            .invoice_accepted(
                r.id,
                &number,
                st.code as i32,
                &st.description,
                Some(&in_session),
            )
            .await?;
        o.upo = receipt(store, ksef, login, r.id, &in_session, &number, wait).await?;
        o.result = result;
        o.ksef_number = Some(number);
    }
    Ok(o)
}

/// Fetches and keeps the receipt, waiting up to `wait` for KSeF to make it.
async fn receipt(
    store: &Store,
    ksef: &Ksef,
    login: &mut Login,
    id: i64,
    session: &str,
    number: &str,
    wait: Duration,
) -> Result<bool, SendError> {
    let start = std::time::Instant::now();
    loop {
        if let Some(upo) = ksef.upo(login, session, number).await? {
            store.invoice_upo(id, &upo).await?;
            return Ok(true);
        }
        if start.elapsed() >= wait {
            return Ok(false);
        }
        tokio::time::sleep(ksef.poll).await;
    }
}
