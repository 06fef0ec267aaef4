//! The embedded signing key: an Ed25519 key Sen creates in its data directory on first start,
//! so that a newcomer can mint a token (`sen token`) and call the API without an OpenID
//! provider. Its public half is published in `/.well-known/jwks.json` like any issuer's.
//!
//! The file holds the PKCS#8 document, readable by its owner only. Losing it invalidates every
//! token it signed; a new one is created on the next start.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde::Serialize;

/// File name of the key under the data directory.
const KEY_FILE: &str = "auth/embedded-signing-key.p8";

/// The embedded key pair.
pub struct EmbeddedKey {
    kid: String,
    /// The public key, base64url (the JWK's `x`).
    x: String,
    encoding: EncodingKey,
}

impl std::fmt::Debug for EmbeddedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl EmbeddedKey {
    /// The key under `data_dir`, created (owner-only) when there is none yet.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join(KEY_FILE);
        let pkcs8 = read_or_create_private(&path, || {
            let rng = ring::rand::SystemRandom::new();
            Ed25519KeyPair::generate_pkcs8(&rng)
                .map(|document| document.as_ref().to_vec())
                .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))
        })?;
        Self::from_pkcs8(&pkcs8).map_err(|e| {
            anyhow::anyhow!(
                "{} is not an Ed25519 PKCS#8 key ({e}); move it away to create a new one",
                path.display()
            )
        })
    }

    fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, ring::error::KeyRejected> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8)?;
        let public = pair.public_key().as_ref();
        let digest = ring::digest::digest(&ring::digest::SHA256, public);
        Ok(Self {
            kid: URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]),
            x: URL_SAFE_NO_PAD.encode(public),
            encoding: EncodingKey::from_ed_der(pkcs8),
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK (`kty: OKP`, `crv: Ed25519`).
    pub fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.x,
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// The key that verifies what this key signs.
    pub fn decoding_key(&self) -> anyhow::Result<DecodingKey> {
        Ok(DecodingKey::from_ed_components(&self.x)?)
    }

    /// `claims` signed as a compact JWT.
    pub fn sign<T: Serialize>(&self, claims: &T) -> anyhow::Result<String> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }
}

/// The secret in the file at `path`; when there is none, `generate`'s, written there (its
/// directory created) readable by its owner only. Written to a temporary name first and
/// linked into place, so two processes starting at once on one data directory end up with
/// the same secret. (The embedded signing key; telehealth's grant secret.)
pub fn read_or_create_private(
    path: &Path,
    generate: impl FnOnce() -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => return Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::anyhow!("cannot read {}: {e}", path.display()));
        }
    }
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    std::fs::create_dir_all(&dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    let secret = generate()?;
    let temporary = dir.join(format!(".secret-{}", uuid::Uuid::new_v4().simple()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&temporary)
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", temporary.display()))?;
    file.write_all(&secret)?;
    file.sync_all()?;
    drop(file);
    let linked = std::fs::hard_link(&temporary, path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(secret),
        // Another process created it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(std::fs::read(path)?),
        Err(e) => Err(anyhow::anyhow!("cannot write {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_and_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let first = EmbeddedKey::load_or_create(dir.path()).unwrap();
        let again = EmbeddedKey::load_or_create(dir.path()).unwrap();
        assert_eq!(first.kid(), again.kid());
        assert_eq!(first.jwk(), again.jwk());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "no access for group or others");
        }
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            EmbeddedKey::load_or_create(other.path()).unwrap().kid(),
            first.kid()
        );
    }

    #[test]
    fn a_damaged_key_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("auth")).unwrap();
        std::fs::write(dir.path().join(KEY_FILE), b"not a key").unwrap();
        let message = EmbeddedKey::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(message.contains("not an Ed25519"), "{message}");
        assert_eq!(
            std::fs::read(dir.path().join(KEY_FILE)).unwrap(),
            b"not a key"
        );
    }
}
