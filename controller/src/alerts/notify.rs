//! Notifications: what each kind of receiver is sent, and delivery with retries.
//!
//! Each change of an alert is queued once per receiver (`alert_notifications`, also
//! the delivery log). Each receiver has its own sender loop, so one that is down
//! never holds up another; a failed send is retried with exponential back-off up
//! to `retry_max`, and given up after `give_up_after`.

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};

use super::config::{AlertsConfig, Receiver, ReceiverKind};
use super::lifecycle::{Alert, State};
use crate::store::alerts::Delivery;
use crate::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Http(String),
    #[error("SMTP: {0}")]
    Smtp(String),
    #[error("receiver misconfigured: {0}")]
    Config(String),
}

const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Longest summary or description sent: the text may quote a tenant's store.
const MAX_TEXT: usize = 1000;

fn bounded(text: &str) -> String {
    super::bounded(text, MAX_TEXT)
}

/// Slack reads `<!channel>`, `<@U…>` and links between `<` and `>`: as its docs ask,
/// `&`, `<` and `>` are sent as entities, so no text of a tenant's can mention
/// anybody or disguise a link.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn alert_json(a: &Alert, status: State, external_url: &str) -> Value {
    json!({
        "status": status.as_str(),
        "labels": a.labels,
        "annotations": {"summary": bounded(&a.summary), "description": bounded(&a.description)},
        "startsAt": a.fired_at.unwrap_or(a.active_since).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "endsAt": match (status, a.resolved_at) {
            (State::Resolved, Some(t)) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            _ => ZERO_TIME.to_string(),
        },
        "generatorURL": format!("{}/alerts", external_url.trim_end_matches('/')),
        "fingerprint": a.fingerprint,
    })
}

/// What `receiver` is sent about `a`.
pub fn payload(receiver: &Receiver, a: &Alert, status: State, config: &AlertsConfig) -> Value {
    let summary = bounded(&a.summary);
    let description = bounded(&a.description);
    let headline = format!(
        "[{}] {}: {}",
        status.as_str().to_uppercase(),
        a.rule.name(),
        summary.replace('\n', " ")
    );
    match &receiver.kind {
        ReceiverKind::Webhook { .. } => json!({
            "version": "4",
            "groupKey": format!("{{}}:{{alertname=\"{}\"}}", a.rule.name()),
            "truncatedAlerts": 0,
            "status": status.as_str(),
            "receiver": receiver.name,
            "groupLabels": {"alertname": a.rule.name()},
            "commonLabels": a.labels,
            "commonAnnotations": {"summary": summary, "description": description},
            "externalURL": config.external_url,
            "alerts": [alert_json(a, status, &config.external_url)],
        }),
        ReceiverKind::Slack { .. } => {
            let icon = if status == State::Firing {
                ":red_circle:"
            } else {
                ":large_green_circle:"
            };
            json!({"text": slack_escape(&format!("{icon} {headline}\n{description}"))})
        }
        ReceiverKind::Email { .. } => json!({
            "subject": headline,
            "body": format!(
                "{}\n\nrule: {}\nstatus: {}\nlabels: {}\nsince: {}\n\n{}\n\nmai-fleet: {}/alerts\n",
                summary,
                a.rule.name(),
                status.as_str(),
                serde_json::to_string(&a.labels).unwrap_or_default(),
                a.fired_at.unwrap_or(a.active_since).format("%Y-%m-%d %H:%M:%S UTC"),
                description,
                config.external_url.trim_end_matches('/')
            ),
        }),
    }
}

async fn send(
    receiver: &Receiver,
    payload: &Value,
    http: &reqwest::Client,
) -> Result<(), SendError> {
    match &receiver.kind {
        ReceiverKind::Webhook { url } | ReceiverKind::Slack { url } => {
            let res = http
                .post(url)
                .json(payload)
                .send()
                .await
                // The URL may carry a token (Slack's do): only the error's kind is kept.
                .map_err(|e| {
                    SendError::Http(if e.is_timeout() {
                        "timed out".into()
                    } else if e.is_connect() {
                        "cannot connect".into()
                    } else {
                        "request failed".into()
                    })
                })?;
            let status = res.status().as_u16();
            if (200..300).contains(&status) {
                Ok(())
            } else {
                Err(SendError::Status(status))
            }
        }
        ReceiverKind::Email {
            smtp,
            from,
            to,
            username,
            password_env,
        } => {
            send_email(
                smtp,
                from,
                to,
                username.as_deref(),
                password_env.as_deref(),
                payload,
            )
            .await
        }
    }
}

async fn send_email(
    smtp: &str,
    from: &str,
    to: &[String],
    username: Option<&str>,
    password_env: Option<&str>,
    payload: &Value,
) -> Result<(), SendError> {
    use lettre::message::header::ContentType;
    use lettre::transport::smtp::authentication::Credentials;
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let (scheme, rest) = smtp
        .split_once("://")
        .ok_or_else(|| SendError::Config(format!("`{smtp}` is not smtp://host:port")))?;
    let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
        Some((h, p)) => (
            h.to_string(),
            p.parse::<u16>()
                .map_err(|_| SendError::Config(format!("bad port in `{smtp}`")))?,
        ),
        None => (
            rest.trim_end_matches('/').to_string(),
            if scheme == "smtps" { 465 } else { 25 },
        ),
    };
    let builder = match scheme {
        "smtp" => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&host),
        "smtps" => AsyncSmtpTransport::<Tokio1Executor>::relay(&host)
            .map_err(|e| SendError::Smtp(e.to_string()))?,
        "smtp+starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&host)
            .map_err(|e| SendError::Smtp(e.to_string()))?,
        _ => {
            return Err(SendError::Config(format!(
                "scheme `{scheme}`: use smtp, smtp+starttls or smtps"
            )))
        }
    };
    let mut builder = builder.port(port).timeout(Some(Duration::from_secs(10)));
    if let Some(user) = username {
        // Checked at configuration too; never a password in plain text.
        if scheme == "smtp" {
            return Err(SendError::Config(
                "SMTP credentials over plain smtp://: use smtp+starttls:// or smtps://".into(),
            ));
        }
        let password = password_env.and_then(crate::env::raw).unwrap_or_default();
        builder = builder.credentials(Credentials::new(user.to_string(), password));
    }
    let mut message = Message::builder()
        .from(
            from.parse()
                .map_err(|e| SendError::Config(format!("from `{from}`: {e}")))?,
        )
        .subject(payload["subject"].as_str().unwrap_or("mai-fleet alert"))
        .header(ContentType::TEXT_PLAIN);
    for t in to {
        message = message.to(t
            .parse()
            .map_err(|e| SendError::Config(format!("to `{t}`: {e}")))?);
    }
    let message = message
        .body(payload["body"].as_str().unwrap_or_default().to_string())
        .map_err(|e| SendError::Smtp(e.to_string()))?;
    builder
        .build()
        .send(message)
        .await
        .map_err(|e| SendError::Smtp(e.to_string()))?;
    Ok(())
}

/// When a notification that failed `attempts` times is tried again (None: give up).
pub fn retry_in(attempts: i32, age: Duration, config: &AlertsConfig) -> Option<Duration> {
    if age >= config.give_up_after {
        return None;
    }
    let backoff = Duration::from_secs(1u64 << attempts.clamp(0, 16));
    Some(backoff.min(config.retry_max))
}

/// Sends every due notification of one receiver once; how many went out.
pub async fn deliver_due(
    store: &Store,
    config: &AlertsConfig,
    receiver: &Receiver,
    http: &reqwest::Client,
) -> Result<usize, StoreError> {
    let mut sent = 0;
    let due: Vec<Delivery> = store.due_notifications(&receiver.name, 50).await?;
    for n in due {
        match send(receiver, &n.payload, http).await {
            Ok(()) => {
                store.mark_sent(n.id).await?;
                sent += 1;
            }
            Err(e) => {
                let age = (Utc::now() - n.created_at).to_std().unwrap_or_default();
                let retry = retry_in(n.attempts + 1, age, config);
                // Each notification backs off on its own: already rate-limited.
                tracing::warn!(
                    receiver = receiver.name.as_str(),
                    notification = n.id,
                    attempts = n.attempts + 1,
                    error = %e,
                    retry_in_s = retry.map(|r| r.as_secs()),
                    "notification not delivered{}",
                    if retry.is_none() { "; giving up" } else { "" }
                );
                store
                    .mark_failed(n.id, &e.to_string(), retry.map(|r| r.as_secs_f64()))
                    .await?;
            }
        }
    }
    Ok(sent)
}

/// One receiver's sender loop, for as long as the server runs: what is due is sent,
/// every half second. A failure of the database is logged when it starts and then
/// once every few minutes, not every round.
pub async fn sender(
    store: Store,
    config: std::sync::Arc<AlertsConfig>,
    receiver: Receiver,
    ctx: crate::supervisor::JobContext,
) -> Result<(), crate::supervisor::JobError> {
    let http = crate::http::client();
    let failures = mai_fleet_core::log::Repeats::new(Duration::from_secs(300));
    loop {
        match deliver_due(&store, &config, &receiver, &http).await {
            Ok(_) => {
                if failures.clear("store") {
                    tracing::info!(
                        receiver = receiver.name.as_str(),
                        "notifications flow again"
                    );
                }
            }
            Err(e) => {
                if let Some(held_back) = failures.check("store") {
                    tracing::warn!(receiver = receiver.name.as_str(), held_back, error = %e, "notifications not read");
                }
            }
        }
        ctx.beat();
        if !ctx.sleep(Duration::from_millis(500)).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_doubles_to_the_cap_and_gives_up() {
        let c = AlertsConfig::parse("t", "retry_max: 30s\ngive_up_after: 1h\n").unwrap();
        assert_eq!(
            retry_in(1, Duration::ZERO, &c),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_in(3, Duration::ZERO, &c),
            Some(Duration::from_secs(8))
        );
        assert_eq!(
            retry_in(10, Duration::ZERO, &c),
            Some(Duration::from_secs(30))
        );
        assert_eq!(retry_in(2, Duration::from_secs(3600), &c), None);
    }

    /// Attack: a tenant's store error text that pings a whole Slack workspace, hides
    /// a link, and floods the channel.
    #[test]
    fn tenant_text_cannot_mention_a_channel_nor_flood_a_receiver() {
        let hostile = format!(
            "<!channel> <@U123> <https://evil.example|your invoice> &amp;\u{7}{}",
            "x".repeat(5000)
        );
        let text = slack_escape(&bounded(&hostile));
        assert!(
            !text.contains('<') && !text.contains('>'),
            "{}",
            &text[..80]
        );
        assert!(text.starts_with("&lt;!channel&gt; &lt;@U123&gt;"));
        assert!(text.contains("&amp;amp;"));
        assert!(!text.contains('\u{7}'));
        assert!(text.chars().count() < 1100, "bounded");
    }

    #[test]
    fn smtp_credentials_over_plain_text_are_refused() {
        let yaml = "receivers:\n  - name: mail\n    email: { smtp: \"smtp://mail.example:25\", from: a@b.pl, to: [c@d.pl], username: u, password_env: P }\n";
        let err = AlertsConfig::parse("alerts.yaml", yaml)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("plain text") && err.contains("smtps://"),
            "{err}"
        );
        let ok = yaml.replace("smtp://", "smtp+starttls://");
        assert!(AlertsConfig::parse("alerts.yaml", &ok).is_ok());
    }
}
