//! The controller's small cryptographic helpers, in one place: randomness from the
//! kernel, SHA-256 digests as hex, and secrets read from owner-only files. Hashing of
//! passwords (argon2) and SCRAM verifiers stay with their users (`web::auth`,
//! `store::hosts`), which call these.

use std::path::Path;

use sha2::{Digest, Sha256};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// SHA-256 of `bytes`, as hex: fingerprints of keys, tokens and spec files.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Bytes from the kernel's CSPRNG, for passwords, salts and session tokens.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read;
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf))?;
    Ok(buf)
}

/// A secret kept in a file, trimmed. As ssh does with private keys, a file the group
/// or others may read is refused: a secret anybody on the machine can read is no
/// longer one. The error never holds the content.
pub fn read_secret_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "secret file {} is readable by group or others (mode {mode:03o}); run `chmod 600 {}`",
                path.display(),
                path.display()
            ));
        }
    }
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))
}
