//! Drafts checked against the official FA(3) schema before they are stored. The
//! schema files travel in the binary (`controller/schemas/fa3/`) and are written to
//! a private directory; `xmllint` (libxml2) validates a whole batch in one run with
//! the network off (`--nonet`).

use std::path::{Path, PathBuf};
use std::process::Command;

const MAIN: &str = "schemat_FA(3)_v1-0E.xsd";
const FILES: &[(&str, &str)] = &[
    (
        MAIN,
        include_str!("../../schemas/fa3/schemat_FA(3)_v1-0E.xsd"),
    ),
    (
        "StrukturyDanych_v10-0E.xsd",
        include_str!("../../schemas/fa3/StrukturyDanych_v10-0E.xsd"),
    ),
    (
        "ElementarneTypyDanych_v10-0E.xsd",
        include_str!("../../schemas/fa3/ElementarneTypyDanych_v10-0E.xsd"),
    ),
    (
        "KodyKrajow_v10-0E.xsd",
        include_str!("../../schemas/fa3/KodyKrajow_v10-0E.xsd"),
    ),
];

/// The validator: `MAI_FLEET_XMLLINT`, else `xmllint` on PATH.
fn xmllint() -> String {
    crate::env::text("MAI_FLEET_XMLLINT").unwrap_or_else(|| "xmllint".to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("cannot run {program} to check drafts against the FA(3) schema: {source} (install libxml2-utils, or set MAI_FLEET_XMLLINT)")]
    NoValidator {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the schema check in {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{} draft(s) do not validate against the FA(3) schema:\n{}", .0.len(), .0.iter().map(|(n, e)| format!("  {n}: {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<(String, String)>),
    #[error("{program} failed without naming a draft: {stderr}")]
    Failed { program: String, stderr: String },
}

/// A private directory that goes with the value.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn io(dir: &Path) -> impl Fn(std::io::Error) -> SchemaError + '_ {
    move |source| SchemaError::Io {
        dir: dir.display().to_string(),
        source,
    }
}

/// Validates every `(name, xml)`; `Invalid` names each draft that fails, with the
/// schema's words.
pub fn validate(docs: &[(String, String)]) -> Result<(), SchemaError> {
    if docs.is_empty() {
        return Ok(());
    }
    let suffix = crate::crypto::hex(
        &crate::crypto::random_bytes::<8>().map_err(io(Path::new("/dev/urandom")))?,
    );
    let dir = WorkDir(std::env::temp_dir().join(format!("mai-fleet-fa3-{suffix}")));
    std::fs::create_dir(&dir.0).map_err(io(&dir.0))?;
    for (name, text) in FILES {
        std::fs::write(dir.0.join(name), text).map_err(io(&dir.0))?;
    }
    let mut files = Vec::with_capacity(docs.len());
    for (i, (_, xml)) in docs.iter().enumerate() {
        let path = dir.0.join(format!("draft-{i}.xml"));
        std::fs::write(&path, xml).map_err(io(&dir.0))?;
        files.push(path);
    }
    let program = xmllint();
    let out = Command::new(&program)
        .arg("--noout")
        .arg("--nonet")
        .arg("--schema")
        .arg(dir.0.join(MAIN))
        .args(&files)
        .output()
        .map_err(|source| SchemaError::NoValidator {
            program: program.clone(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut bad: Vec<(String, String)> = Vec::new();
    for (i, (name, _)) in docs.iter().enumerate() {
        let file = files[i].display().to_string();
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with(&format!("{file}:")) && !l.ends_with("fails to validate"))
            .map(|l| l[file.len() + 1..].trim())
            .collect();
        if !errors.is_empty() {
            bad.push((name.clone(), errors.join("; ")));
        }
    }
    if bad.is_empty() {
        return Err(SchemaError::Failed {
            program,
            stderr: stderr.chars().take(2000).collect(),
        });
    }
    Err(SchemaError::Invalid(bad))
}
