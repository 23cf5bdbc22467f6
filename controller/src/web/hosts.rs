//! The hosts page: each Docker host, its agent's last heartbeat and its tenants.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

use super::auth::Authed;
use super::view::{age, Chrome};
use super::{render, AppState, WebError};
use crate::store::dashboard::HostRow;

#[derive(Template)]
#[template(path = "hosts.html")]
struct HostsPage {
    chrome: Chrome,
    hosts: Vec<HostRow>,
}

impl HostsPage {
    fn heartbeat(&self, h: &HostRow) -> String {
        match &h.last_heartbeat {
            Some(at) => format!(
                "{} ago ({})",
                age(h.heartbeat_age_s),
                at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
            None => "never".into(),
        }
    }
}

pub async fn page(State(state): State<AppState>, authed: Authed) -> Result<Response, WebError> {
    render(&HostsPage {
        chrome: Chrome {
            user: authed.user,
            csrf: authed.csrf,
            nav: "hosts",
        },
        hosts: state.store.host_rows().await?,
    })
}

pub async fn api(State(state): State<AppState>, _authed: Authed) -> Result<Json<Value>, WebError> {
    Ok(Json(json!({ "hosts": state.store.host_rows().await? })))
}
