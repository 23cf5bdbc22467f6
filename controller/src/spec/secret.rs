//! Secrets named in a spec (`${env:VAR}`, `${file:PATH}`), resolved at load time and
//! kept in a type that never prints its value.

use mai_fleet_core::Invalid;
use std::fmt;
use std::path::Path;

use crate::crypto::sha256_hex;

/// Where `${env:…}` looks; tests pass their own so they need not touch the process env.
pub trait EnvSource: Sync {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        crate::env::raw(name)
    }
}

impl EnvSource for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// A tenant's OpenRouter API key. `Debug` and `Display` show only the masked form.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// What a plan shows for a provisioned tenant whose key `apply` has yet to
    /// create: not a key, so no container can be made with it (`docker::engine`).
    pub fn pending() -> Self {
        Self("(provisioned by apply)".into())
    }

    pub fn is_pending(&self) -> bool {
        !self.0.starts_with("sk-or-v1-")
    }

    /// The key itself, for the container's environment only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `sk-or-v1-…c96`: enough for a person to tell keys apart.
    pub fn masked(&self) -> String {
        if self.is_pending() {
            return self.0.clone();
        }
        let tail: String = self
            .0
            .chars()
            .rev()
            .take(3)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!("sk-or-v1-…{tail}")
    }

    /// A SHA-256 of the key, to tell a rotation apart without storing the key.
    pub fn fingerprint(&self) -> String {
        sha256_hex(self.0.as_bytes())
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl fmt::Display for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked())
    }
}

impl serde::Serialize for ApiKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.masked())
    }
}

/// A reference to a secret as written in the spec.
pub enum Reference<'a> {
    Env(&'a str),
    File(&'a str),
}

/// Parses `${env:NAME}` / `${file:PATH}`; anything else is not a reference.
pub fn parse_reference(text: &str) -> Option<Reference<'_>> {
    let inner = text.trim().strip_prefix("${")?.strip_suffix('}')?;
    if let Some(name) = inner.strip_prefix("env:") {
        Some(Reference::Env(name))
    } else {
        inner.strip_prefix("file:").map(Reference::File)
    }
}

/// Resolves a reference; the error says what to fix and never contains the value.
pub fn resolve(
    reference: &Reference<'_>,
    base_dir: &Path,
    env: &dyn EnvSource,
) -> Result<String, Invalid> {
    match reference {
        Reference::Env(name) => match env.var(name) {
            Some(v) if !v.trim().is_empty() => Ok(v.trim().to_string()),
            Some(_) => Err(format!("environment variable {name} is empty").into()),
            None => Err(format!(
                "environment variable {name} is not set; export it before running the controller"
            )
            .into()),
        },
        Reference::File(p) => {
            crate::crypto::read_secret_file(&base_dir.join(p)).map_err(|e| Invalid(e.to_string()))
        }
    }
}

/// Serializes an env map as its names only: values may be secrets, and the record
/// of a tenant keeps them through [`super::TenantSpec::env_for_record`].
pub fn serialize_env_names<S: serde::Serializer>(
    env: &std::collections::BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_seq(env.keys())
}
