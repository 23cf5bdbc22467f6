//! The one HTTP client setup for the services the controller calls (NBP,
//! OpenRouter, alert receivers): a timeout, and a user agent naming us.

use std::time::Duration;

pub fn client() -> reqwest::Client {
    builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default()
}

/// The setup for a service that needs timeouts of its own (KSeF).
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().user_agent(concat!("mai-fleet/", env!("CARGO_PKG_VERSION")))
}
