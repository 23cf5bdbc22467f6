//! The tenant's data directory, on a local engine only: made owner-only before a
//! launch, and deleted by `--purge-data` after checking the id once more.

use super::engine::Engine;
use crate::plan::Workload;

/// Creates `<data_root>/<id>/data` owner-only when the engine is local; on a remote
/// engine Docker creates the bind source itself.
pub(super) fn prepare_data_dir(engine: &Engine, d: &Workload) {
    if !engine.local {
        return;
    }
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d.data_dir);
    // The tenant directory holds a client's conversations: owner-only.
    if let Some(parent) = std::path::Path::new(&d.data_dir).parent() {
        let _ = std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700));
    }
}

pub(super) fn purge_or_keep_data(engine: &Engine, tenant: &str, purge: bool) -> String {
    // The plan refuses such containers already; a path built from a label is checked
    // once more where it is deleted.
    if crate::spec::check_tenant_id(tenant).is_err() {
        return format!("; data NOT purged: {tenant:?} is not a tenant id");
    }
    let dir = format!("{}/{tenant}", engine.host.data_root);
    if !purge {
        return format!("; data kept in {dir}");
    }
    if !engine.local {
        return format!("; data NOT purged: {dir} is on a remote host (remove it there)");
    }
    // Removed through directory handles: nothing the tenant made in it (a link to
    // elsewhere) is followed.
    let purged = mai_fleet_core::tree::Dir::open(std::path::Path::new(&engine.host.data_root))
        .and_then(|root| root.remove(std::ffi::OsStr::new(tenant)));
    match purged {
        Ok(()) => format!("; data purged from {dir}"),
        Err(e) => format!("; data NOT purged from {dir}: {e}"),
    }
}
