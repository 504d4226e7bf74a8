//! Real PANs at rest: AES-256-GCM under a 32-byte key file.
//!
//! Only real PANs are secret enough to encrypt (vPANs are the public face of the card, and
//! the journal needs them in the clear to key records). Each encryption draws a fresh
//! random 96-bit nonce, stored in front of the ciphertext, so the same PAN never encrypts to
//! the same bytes twice; at the journal's volume (one record per issued card, one per card
//! per snapshot) random nonces stay far below the 2^32-messages-per-key bound. The vPAN is
//! the associated data: a ciphertext copied onto another card's record fails to decrypt.
//! The key file is created with mode 0600 at first start when absent.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngExt;
use zeroize::Zeroize;

use super::StoreError;
use crate::pan::Pan;

/// Bytes of nonce in front of each ciphertext.
pub const NONCE_BYTES: usize = 12;

/// Encrypts and decrypts real PANs. Does not print its key.
#[derive(Clone)]
pub struct PanCipher {
    /// The AES-256-GCM instance, key schedule included.
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for PanCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PanCipher(..)")
    }
}

impl PanCipher {
    /// A cipher from 32 key bytes.
    pub fn from_key(key: &[u8; 32]) -> PanCipher {
        // A 32-byte slice always fits Aes256Gcm's key size.
        match Aes256Gcm::new_from_slice(key) {
            Ok(cipher) => PanCipher { cipher },
            Err(_) => unreachable!("AES-256 takes a 32-byte key"),
        }
    }

    /// Reads the key file, or creates it (0600, 32 random bytes, synced) when absent.
    pub fn load_or_create(path: &Path) -> Result<PanCipher, StoreError> {
        let mut key = [0u8; 32];
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut file) => {
                rand::rng().fill(&mut key[..]);
                file.write_all(&key)
                    .and_then(|()| file.sync_all())
                    .map_err(StoreError::io("writing the new key file"))?;
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    super::journal::sync_dir(dir)
                        .map_err(StoreError::io("writing the key file"))?;
                }
                tracing::info!(path = %path.display(), "created a new key for real card numbers");
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let mut file = OpenOptions::new()
                    .read(true)
                    .open(path)
                    .map_err(StoreError::io("opening the key file"))?;
                if let Ok(meta) = file.metadata()
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(path = %path.display(), "the key file is readable by group or others; it should be 0600");
                }
                let mut bytes = Vec::with_capacity(33);
                file.read_to_end(&mut bytes)
                    .map_err(StoreError::io("reading the key file"))?;
                if bytes.len() != 32 {
                    bytes.zeroize();
                    return Err(StoreError::BadKey(path.to_path_buf()));
                }
                key.copy_from_slice(&bytes);
                bytes.zeroize();
            }
            Err(e) => return Err(StoreError::io("creating the key file")(e)),
        }
        let cipher = PanCipher::from_key(&key);
        key.zeroize();
        Ok(cipher)
    }

    /// Encrypts `pan`, bound to `context` (the vPAN key): nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, pan: &Pan, context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill(&mut nonce[..]);
        let sealed = self.cipher.encrypt(
            &Nonce::from(nonce),
            Payload {
                msg: pan.as_bytes(),
                aad: context,
            },
        );
        let mut out = Vec::with_capacity(NONCE_BYTES + pan.len() + 16);
        out.extend_from_slice(&nonce);
        // Encryption only fails for inputs longer than 64 GiB.
        out.extend_from_slice(&sealed.unwrap_or_default());
        out
    }

    /// Decrypts what [`PanCipher::seal`] made with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Pan, StoreError> {
        if sealed.len() < NONCE_BYTES + 16 {
            return Err(StoreError::Decrypt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| StoreError::Decrypt)?;
        let mut plain = self
            .cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: context,
                },
            )
            .map_err(|_| StoreError::Decrypt)?;
        let pan = Pan::from_digits(&plain).map_err(|_| StoreError::Decrypt);
        plain.zeroize();
        pan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One made-up card for the module's tests.
    fn pan() -> Pan {
        static DIGITS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        let digits = DIGITS.get_or_init(|| crate::pan::test_pan("497010"));
        Pan::from_digits_checked(digits.as_bytes()).unwrap()
    }

    #[test]
    fn a_sealed_pan_opens_with_the_same_key_and_context_only() {
        let dir = tempfile::tempdir().unwrap();
        let c = PanCipher::load_or_create(&dir.path().join("pan.key")).unwrap();
        let sealed = c.seal(&pan(), b"ctx");
        assert_eq!(c.open(&sealed, b"ctx").unwrap(), pan());
        assert_eq!(c.open(&sealed, b"other"), Err(StoreError::Decrypt));
        let other = PanCipher::from_key(&[7; 32]);
        assert_eq!(other.open(&sealed, b"ctx"), Err(StoreError::Decrypt));
        assert!(!sealed.windows(16).any(|w| w == pan().as_bytes()));
    }

    #[test]
    fn the_same_pan_never_seals_to_the_same_bytes() {
        let c = PanCipher::from_key(&[1; 32]);
        assert_ne!(c.seal(&pan(), b""), c.seal(&pan(), b""));
    }

    #[test]
    fn the_key_file_is_made_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pan.key");
        let c1 = PanCipher::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
        let c2 = PanCipher::load_or_create(&path).unwrap();
        assert_eq!(c2.open(&c1.seal(&pan(), b"k"), b"k").unwrap(), pan());
    }

    #[test]
    fn a_key_file_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pan.key");
        std::fs::write(&path, b"short").unwrap();
        assert!(matches!(
            PanCipher::load_or_create(&path),
            Err(StoreError::BadKey(_))
        ));
    }
}
