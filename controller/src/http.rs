//! The one HTTP client setup for the services the controller calls (NBP,
//! OpenRouter, alert receivers): a timeout, and a user agent naming us.

use std::time::Duration;

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("mai-fleet/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}
