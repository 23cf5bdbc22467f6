//! What a managed tenant container is, as both the controller (which creates it) and
//! the agent (which finds and reads it) must see it.

use crate::Invalid;

/// Labels on every managed container. The agent trusts none of their values: each
/// is checked again where it is used (a tenant controls nothing here, but anyone with
/// access to the engine may start a container carrying them).
pub mod labels {
    pub const MANAGED: &str = "mai-fleet.managed";
    pub const TENANT: &str = "mai-fleet.tenant";
    pub const HOST: &str = "mai-fleet.host";
    pub const FLEET: &str = "mai-fleet.fleet";
    pub const SPEC_HASH: &str = "mai-fleet.spec-hash";
}

/// Environment variables the app needs to track usage; a spec may not set them through
/// `env:` (a container without them tracked nothing for two days).
pub const REQUIRED_ENV: [&str; 3] = [
    "OPENROUTER_API_KEY",
    "OPENROUTER_EXTERNAL_USER",
    "ORGANIZATION_NAME",
];

/// The variable holding the tenant's organization id (`client_org_id` in its store).
pub const ORG_ENV: &str = "OPENROUTER_EXTERNAL_USER";

/// The app's data directory inside the container; `webui.db` lives in it.
pub const DATA_MOUNT: &str = "/app/backend/data";

/// Inside a Kubernetes agent's pod: where each tenant's claim (a host with a storage
/// class) is mounted, read-only, at `CLAIMS_MOUNT/<claim name>`.
pub const CLAIMS_MOUNT: &str = "/var/lib/mai-fleet/claims";

/// Where an agent reads a claim's data: `None` for a name that is not one
/// Kubernetes gives (a DNS subdomain), so no name from a pod spec leaves the mount.
pub fn claim_dir(claim: &str) -> Option<std::path::PathBuf> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    (claim.len() <= 253 && claim.split('.').all(label_ok))
        .then(|| std::path::Path::new(CLAIMS_MOUNT).join(claim))
}

/// The usage store's file name in the data directory.
pub const STORE_FILE: &str = "webui.db";

/// The app's HTTP port inside the container.
pub const APP_PORT: u16 = 8080;

/// A tenant's container name.
pub fn container_name(tenant: &str) -> String {
    format!("mai-{tenant}")
}

/// A fleet's own bridge network.
pub fn network_name(fleet: &str) -> String {
    format!("mai-fleet-net-{fleet}")
}

/// Tenant ids become container names (`mai-<id>`), label values and directory names:
/// anything else found in a label is refused before it is used.
pub fn check_tenant_id(id: &str) -> Result<(), Invalid> {
    lowercase_name(id, 2, 40)
}

/// Host and fleet names: label values.
pub fn check_name_label(name: &str) -> Result<(), Invalid> {
    lowercase_name(name, 1, 63)
}

fn lowercase_name(text: &str, min: usize, max: usize) -> Result<(), Invalid> {
    let ok = (min..=max).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!("use {min} to {max} characters of a-z, 0-9 and '-'").into())
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreFileError {
    #[error("usage store {0} does not exist")]
    Missing(String),
    #[error("{0} is a symbolic link; only the tenant's own regular file is read")]
    Link(String),
    #[error("{0} is not a regular file (a FIFO, a device or a directory)")]
    NotAFile(String),
}

/// Refuses what SQLite must never open: anything but a regular file (a FIFO blocks
/// the opener forever, a device reads without end) and symbolic links (out of the
/// tenant's directory, into another tenant's store). The journal files SQLite opens
/// beside the database are checked too. The store is the tenant's, so hostile.
pub fn check_store_files(path: &std::path::Path) -> Result<(), StoreFileError> {
    let dir_ok = path
        .parent()
        .and_then(|d| std::fs::symlink_metadata(d).ok())
        .is_some_and(|m| m.is_dir());
    if !dir_ok {
        return Err(StoreFileError::Missing(path.display().to_string()));
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let file = format!("{}{suffix}", path.display());
        let meta = match std::fs::symlink_metadata(&file) {
            Ok(m) => m,
            Err(_) if suffix.is_empty() => return Err(StoreFileError::Missing(file)),
            Err(_) => continue,
        };
        let name = std::path::Path::new(&file)
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        if meta.file_type().is_symlink() {
            return Err(StoreFileError::Link(name));
        }
        if !meta.is_file() {
            return Err(StoreFileError::NotAFile(name));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim's name comes from a pod spec: it must never lead the agent out of
    /// the claims' mount.
    #[test]
    fn a_claim_name_never_leaves_the_claims_mount() {
        assert_eq!(
            claim_dir("mai-acme-data"),
            Some(std::path::Path::new(CLAIMS_MOUNT).join("mai-acme-data"))
        );
        for hostile in ["..", "../etc", "a/b", "/etc", "", "A", "a..b", "-a", "a b"] {
            assert_eq!(claim_dir(hostile), None, "{hostile:?}");
        }
    }

    #[test]
    fn ids_that_could_escape_a_path_or_a_name_are_refused() {
        assert!(check_tenant_id("kancelaria-nowak").is_ok());
        for bad in ["", "a", "../x", "A-b", "x/y", "a b", &"x".repeat(41)] {
            assert!(check_tenant_id(bad).is_err(), "{bad:?}");
        }
        assert!(check_name_label("h").is_ok());
        assert_eq!(container_name("acme"), "mai-acme");
        assert_eq!(network_name("prod"), "mai-fleet-net-prod");
    }
}
