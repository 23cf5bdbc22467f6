//! The controller's small cryptographic helpers, in one place: randomness from the
//! kernel, SHA-256 digests as hex, secrets read from owner-only files, and the
//! sealing of provisioned OpenRouter keys under the fleet's master key. Hashing of
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

/// Why a secret file could not be used. Never holds the content.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    #[error("secret file {path} is readable by group or others (mode {mode:03o}); run `chmod 600 {path}`")]
    Exposed { path: String, mode: u32 },
    #[error("cannot read secret file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secret file {path} is not UTF-8 text")]
    NotText { path: String },
}

/// A secret kept in a file, trimmed. As ssh does with private keys, a file the group
/// or others may read is refused: a secret anybody on the machine can read is no
/// longer one.
pub fn read_secret_file(path: &Path) -> Result<String, SecretFileError> {
    let bytes = read_secret_bytes(path)?;
    String::from_utf8(bytes)
        .map(|s| s.trim().to_string())
        .map_err(|_| SecretFileError::NotText {
            path: path.display().to_string(),
        })
}

/// [`read_secret_file`]'s bytes as they are (a master key is raw random bytes).
pub fn read_secret_bytes(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretFileError::Exposed {
                path: path.display().to_string(),
                mode,
            });
        }
    }
    std::fs::read(path).map_err(|source| SecretFileError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The least a master key file may hold: `head -c 32 /dev/urandom` makes one.
pub const MASTER_KEY_MIN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{0}")]
    MasterKey(String),
    #[error(transparent)]
    File(#[from] SecretFileError),
    #[error("no randomness for a nonce: {0}")]
    Random(#[source] std::io::Error),
    /// Wrong master key, or a ciphertext moved to another row or altered.
    #[error("a sealed key does not open with this master key (another master key, or the row was altered)")]
    Open,
}

/// Seals secrets at rest with ChaCha20-Poly1305 under a key derived (HKDF-SHA256)
/// from the fleet's master key file. Each ciphertext is bound to what it belongs to
/// (`context`, e.g. the tenant and the key's hash), so a row copied onto another
/// tenant does not open. The master key never leaves this value.
pub struct Sealer {
    key: ring::aead::LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(…)")
    }
}

struct KeyLen;
impl ring::hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

impl Sealer {
    /// From the master key file: owner-only, at least 32 bytes.
    pub fn from_file(path: &Path) -> Result<Self, SealError> {
        let bytes = read_secret_bytes(path)?;
        Self::from_master(&bytes).map_err(|e| match e {
            SealError::MasterKey(m) => SealError::MasterKey(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn from_master(master: &[u8]) -> Result<Self, SealError> {
        if master.len() < MASTER_KEY_MIN_BYTES {
            return Err(SealError::MasterKey(format!(
                "the master key holds {} byte(s), at least {MASTER_KEY_MIN_BYTES} are needed (`head -c 32 /dev/urandom > FILE; chmod 600 FILE`)",
                master.len()
            )));
        }
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"mai-fleet");
        let mut raw = [0u8; 32];
        salt.extract(master)
            .expand(&[b"openrouter keys v1"], KeyLen)
            .and_then(|okm| okm.fill(&mut raw))
            .map_err(|_| SealError::MasterKey("key derivation failed".into()))?;
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &raw)
            .map_err(|_| SealError::MasterKey("key derivation failed".into()))?;
        Ok(Self {
            key: ring::aead::LessSafeKey::new(unbound),
        })
    }

    /// nonce (12 bytes) ‖ ciphertext ‖ tag.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce_bytes = random_bytes::<12>().map_err(SealError::Random)?;
        let nonce = ring::aead::Nonce::assume_unique_for_key(nonce_bytes);
        let mut in_out = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                nonce,
                ring::aead::Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| SealError::Open)?;
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&in_out);
        Ok(out)
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 12 {
            return Err(SealError::Open);
        }
        let (nonce_bytes, body) = sealed.split_at(12);
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(nonce_bytes)
            .map_err(|_| SealError::Open)?;
        let mut in_out = body.to_vec();
        let plain = self
            .key
            .open_in_place(
                nonce,
                ring::aead::Aad::from(context.as_bytes()),
                &mut in_out,
            )
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_keys_open_only_with_their_master_key_and_context() {
        let a = Sealer::from_master(&[7u8; 32]).unwrap();
        let b = Sealer::from_master(&[8u8; 32]).unwrap();
        let sealed = a.seal("t1/hash1", b"sk-or-v1-secret").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(a.open("t1/hash1", &sealed).unwrap(), b"sk-or-v1-secret");
        assert!(matches!(a.open("t2/hash1", &sealed), Err(SealError::Open)));
        assert!(matches!(b.open("t1/hash1", &sealed), Err(SealError::Open)));
        let mut flipped = sealed.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert!(a.open("t1/hash1", &flipped).is_err());
        // Two seals of one key differ (fresh nonce each time).
        assert_ne!(sealed, a.seal("t1/hash1", b"sk-or-v1-secret").unwrap());
        assert!(Sealer::from_master(&[1u8; 31]).is_err());
    }
}
