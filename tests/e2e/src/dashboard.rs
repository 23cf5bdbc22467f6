//! A dashboard session as a browser holds it: log in through the form, keep the
//! cookie, send the CSRF token with forms.

use crate::{http_full, http_full_from, HttpResponse};

pub struct Session {
    pub port: u16,
    pub cookie: String,
}

fn set_cookie_value(r: &HttpResponse, name: &str) -> Option<String> {
    r.headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split(';').next())
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v.to_string())
}

/// The value of `<input ... name="NAME" value="...">` in a page.
pub fn form_value(html: &str, name: &str) -> Option<String> {
    let at = html.find(&format!("name=\"{name}\" value=\""))?;
    let rest = &html[at + name.len() + 15..];
    Some(rest[..rest.find('"')?].to_string())
}

/// Posts the login form; the answer (303 with a session cookie, or 401).
pub fn login(port: u16, user: &str, password: &str) -> (HttpResponse, Option<Session>) {
    login_from(port, user, password, None)
}

/// [`login`] from a chosen loopback address.
pub fn login_from(
    port: u16,
    user: &str,
    password: &str,
    from: Option<std::net::IpAddr>,
) -> (HttpResponse, Option<Session>) {
    let form = http_full_from(from, port, "GET", "/login", None, &[]).expect("login page");
    let csrf_cookie = set_cookie_value(&form, "mai_login_csrf").expect("login CSRF cookie");
    let csrf = form_value(&form.body, "csrf").expect("csrf field");
    let body = format!("name={user}&password={password}&csrf={csrf}&next=/");
    let cookie = format!("mai_login_csrf={csrf_cookie}");
    let r = http_full_from(
        from,
        port,
        "POST",
        "/login",
        Some(&body),
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Cookie", &cookie),
        ],
    )
    .expect("login answer");
    let session = set_cookie_value(&r, "mai_session").map(|c| Session { port, cookie: c });
    (r, session)
}

impl Session {
    pub fn get(&self, path: &str) -> HttpResponse {
        let cookie = format!("mai_session={}", self.cookie);
        http_full(self.port, "GET", path, None, &[("Cookie", &cookie)])
            .unwrap_or_else(|| panic!("GET {path}"))
    }

    pub fn post_form(&self, path: &str, form: &str) -> HttpResponse {
        let cookie = format!("mai_session={}", self.cookie);
        http_full(
            self.port,
            "POST",
            path,
            Some(form),
            &[
                ("Content-Type", "application/x-www-form-urlencoded"),
                ("Cookie", &cookie),
            ],
        )
        .unwrap_or_else(|| panic!("POST {path}"))
    }
}
