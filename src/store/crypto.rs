//! Real PANs at rest: AES-256-GCM under a 32-byte key file.
//!
//! Only real PANs are secret enough to encrypt (vPANs are the public face of the card, and
//! the journal needs them in the clear to key records). Each issuance draws a fresh random
//! 96-bit nonce, stored in front of the ciphertext, so two cards on one real PAN never share
//! bytes. A snapshot writes each card's PAN again under the nonce of its issuance, which
//! gives the same bytes (the message and its context are the same too), so fresh nonces
//! are drawn once per issued card, not once per card per snapshot: a million cards
//! snapshotted every few minutes would otherwise pass AES-GCM's bound of 2^32 random
//! nonces per key within weeks. The vPAN is the associated data: a ciphertext copied onto
//! another card's record fails to decrypt.
//! The key file is created with mode 0600 at first start when absent.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngExt;
use zeroize::Zeroize;

use super::StoreError;
use super::marker::MarkerKey;
use crate::pan::Pan;

/// Turns this process's core dumps off: once the store is open, every real PAN is in its
/// memory in the clear, and a crash or a signal must not write them to a core file. Both
/// limits go to 0, so that nothing later in the process raises the soft one again; and the
/// process is marked not dumpable, for a core pattern that pipes to a collector (which the
/// limit does not bind), which also keeps other processes of the same user from reading
/// its memory (a debugger or `perf` attaching to it then needs root). `vpan serve`,
/// `vpan demo` and `vpan rekey` call it first, whatever runs them: a shell, a container,
/// the systemd unit (which sets `LimitCORE=0` as well).
pub fn no_core_dumps() -> Result<(), String> {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior};
        let none = Rlimit {
            current: Some(0),
            maximum: Some(0),
        };
        rustix::process::setrlimit(Resource::Core, none)
            .and_then(|()| set_dumpable_behavior(DumpableBehavior::NotDumpable))
            .map_err(|e| format!("turning core dumps off: {e}"))?;
    }
    Ok(())
}

/// Bytes of nonce in front of each ciphertext.
pub const NONCE_BYTES: usize = 12;

/// Encrypts and decrypts real PANs. Does not print its key.
#[derive(Clone)]
pub struct PanCipher {
    /// The AES-256-GCM instance, key schedule included.
    cipher: Aes256Gcm,
    /// Signs the journal's commit markers, under a key derived from the same key file.
    markers: MarkerKey,
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
            Ok(cipher) => PanCipher {
                cipher,
                markers: MarkerKey::derive(key),
            },
            Err(_) => unreachable!("AES-256 takes a 32-byte key"),
        }
    }

    /// Reads the key file, or creates it (0600, 32 random bytes, synced) when absent.
    pub fn load_or_create(path: &Path) -> Result<PanCipher, StoreError> {
        remove_stale_temporaries(path);
        // `try_exists`: a key there that cannot be reached (a directory vpan may not
        // enter) is that error, not a cue to make a new key.
        if !path
            .try_exists()
            .map_err(key_file_error(path, "looking for it"))?
        {
            create_key_file(path)?;
        }
        PanCipher::load(path)
    }

    /// Reads the key file, which must be there: never makes one (a key that vanished
    /// between a look and the read is an error, not a new key nobody kept).
    pub fn load(path: &Path) -> Result<PanCipher, StoreError> {
        let mut key = [0u8; 32];
        let mut file = OpenOptions::new()
            .read(true)
            .open(path)
            .map_err(key_file_error(path, "opening it"))?;
        super::warn_if_open_to_others(path, "the key file for real card numbers");
        let mut bytes = Vec::with_capacity(33);
        file.read_to_end(&mut bytes)
            .map_err(key_file_error(path, "reading it"))?;
        if bytes.len() != 32 {
            let found = bytes.len();
            bytes.zeroize();
            return Err(StoreError::BadKey {
                path: path.to_path_buf(),
                found,
            });
        }
        key.copy_from_slice(&bytes);
        bytes.zeroize();
        let cipher = PanCipher::from_key(&key);
        key.zeroize();
        Ok(cipher)
    }

    /// The key that signs the journal's commit markers.
    pub fn marker_key(&self) -> MarkerKey {
        self.markers.clone()
    }

    /// Encrypts `pan`, bound to `context` (the vPAN key), under a fresh random nonce:
    /// nonce ‖ ciphertext ‖ tag.
    pub fn seal(&self, pan: &Pan, context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill(&mut nonce[..]);
        self.reseal(pan, context, &nonce)
    }

    /// Encrypts `pan` again under `nonce`, which must be the nonce of an earlier
    /// [`PanCipher::seal`] of this same `pan` and `context` (see [`nonce_of`]): the bytes
    /// are then that sealing's bytes again, so the nonce never meets a second message, and
    /// a snapshot spends no fresh nonce on a card it writes again.
    pub fn reseal(&self, pan: &Pan, context: &[u8], nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
        self.encrypt(pan.as_bytes(), context, nonce)
    }

    /// Encrypts bytes that carry a real PAN among others (a message toward the issuer that
    /// must wait on disk), bound to `context`, under a fresh random nonce.
    pub fn seal_bytes(&self, plain: &[u8], context: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::rng().fill(&mut nonce[..]);
        self.encrypt(plain, context, &nonce)
    }

    /// nonce ‖ ciphertext ‖ tag.
    fn encrypt(&self, plain: &[u8], context: &[u8], nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
        let sealed = self.cipher.encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: plain,
                aad: context,
            },
        );
        let mut out = Vec::with_capacity(NONCE_BYTES + plain.len() + 16);
        out.extend_from_slice(nonce);
        // Encryption only fails for inputs longer than 64 GiB.
        out.extend_from_slice(&sealed.unwrap_or_default());
        out
    }

    /// Decrypts what [`PanCipher::seal`] made with the same `context`.
    pub fn open(&self, sealed: &[u8], context: &[u8]) -> Result<Pan, StoreError> {
        let mut plain = self.open_bytes(sealed, context)?;
        let pan = Pan::from_digits(&plain).map_err(|_| StoreError::Decrypt);
        plain.zeroize();
        pan
    }

    /// Decrypts what [`PanCipher::seal_bytes`] made with the same `context`. The caller
    /// zeroizes the bytes once done with them.
    pub fn open_bytes(&self, sealed: &[u8], context: &[u8]) -> Result<Vec<u8>, StoreError> {
        if sealed.len() < NONCE_BYTES + 16 {
            return Err(StoreError::Decrypt);
        }
        let (nonce, ct) = sealed.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| StoreError::Decrypt)?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ct,
                    aad: context,
                },
            )
            .map_err(|_| StoreError::Decrypt)
    }
}

/// The nonce a [`PanCipher::seal`] put in front of `sealed`, if it is long enough to hold
/// one (whether it opens is [`PanCipher::open`]'s to say).
pub fn nonce_of(sealed: &[u8]) -> Option<[u8; NONCE_BYTES]> {
    sealed.get(..NONCE_BYTES)?.try_into().ok()
}

/// Makes a new key file at `path`, whole or not at all: the key is written and synced
/// under a temporary name, then linked to `path`. A crash part way leaves no key file (or
/// a stray temporary one), never an empty or short one that would stop every later start;
/// and a link never replaces a key file that appeared meanwhile, whose key may already
/// seal cards.
fn create_key_file(path: &Path) -> Result<(), StoreError> {
    let mut name = path.as_os_str().to_owned();
    // Unique (a PID alone repeats across containers sharing the path), and opened with
    // `create_new`, so no other start's temporary file is ever truncated.
    name.push(format!(
        "{TEMPORARY_INFIX}{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let temp = std::path::PathBuf::from(name);
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        let mut key = [0u8; 32];
        rand::rng().fill(&mut key[..]);
        let written = file.write_all(&key).and_then(|()| file.sync_all());
        key.zeroize();
        written
    })();
    let linked = written.and_then(|()| match std::fs::hard_link(&temp, path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        other => other.map(|()| true),
    });
    // The temporary name goes either way; the key lives on under `path` if linked.
    let _ = std::fs::remove_file(&temp);
    let linked = linked.map_err(key_file_error(path, "writing a new one"))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        super::journal::sync_dir(dir).map_err(key_file_error(path, "syncing its directory"))?;
    }
    if linked {
        tracing::info!(path = %path.display(), "created a new key for real card numbers");
    }
    Ok(())
}

/// What follows the key file's name in its temporaries' (`pan.key.new-<pid>-<random>`).
const TEMPORARY_INFIX: &str = ".new-";

/// How old a key file's temporary must be to be another start's leftover, not its work.
const STALE_TEMPORARY: std::time::Duration = std::time::Duration::from_secs(60);

/// Removes the temporaries of the key file at `path` (`<key>.new-…`) that a start killed
/// while it made the key left behind, a minute old or more: each is a copy of the key, or
/// of one never linked, and would outlive the key's destruction after a rekey. Younger ones
/// may be another start's at work (two sharing a key path), and are left to it.
fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}{TEMPORARY_INFIX}", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let stale = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age >= STALE_TEMPORARY));
        if stale
            && entry.file_name().to_string_lossy().starts_with(&prefix)
            && std::fs::remove_file(entry.path()).is_ok()
        {
            tracing::info!(path = %entry.path().display(), "removed a key file's temporary left by a start that was killed");
        }
    }
}

/// A failed file operation on the key file, naming it: a start that cannot make or read
/// it says which file, and which setting points there.
fn key_file_error(path: &Path, what: &'static str) -> impl Fn(std::io::Error) -> StoreError {
    move |e| StoreError::KeyFile {
        path: path.to_path_buf(),
        what,
        message: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

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
    fn a_key_file_that_cannot_be_made_is_named_with_its_setting() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("pan.key");
        let e = match PanCipher::load_or_create(&path) {
            Err(e) => e,
            Ok(_) => panic!("a key file in a missing directory cannot be made"),
        };
        let text = e.to_string();
        assert!(matches!(e, StoreError::KeyFile { .. }), "{text}");
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(text.contains("store.key_file"), "{text}");
    }

    #[test]
    fn the_same_pan_never_seals_to_the_same_bytes() {
        let c = PanCipher::from_key(&[1; 32]);
        assert_ne!(c.seal(&pan(), b""), c.seal(&pan(), b""));
    }

    #[test]
    fn resealing_under_the_first_sealings_nonce_gives_its_bytes_again() {
        let c = PanCipher::from_key(&[1; 32]);
        let sealed = c.seal(&pan(), b"card");
        let nonce = nonce_of(&sealed).unwrap();
        assert_eq!(c.reseal(&pan(), b"card", &nonce), sealed);
        assert_eq!(nonce_of(&sealed[..5]), None);
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
    fn a_new_key_file_appears_whole_and_never_replaces_one_already_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pan.key");
        let c1 = PanCipher::load_or_create(&path).unwrap();
        let first = std::fs::read(&path).unwrap();
        // Another start that finds no key at first and then loses the race links nothing
        // over it: its temporary key is dropped and the one on disk is used.
        create_key_file(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), first);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("pan.key")],
            "no temporary left"
        );
        let c2 = PanCipher::load_or_create(&path).unwrap();
        assert_eq!(c2.open(&c1.seal(&pan(), b"k"), b"k").unwrap(), pan());
    }

    #[test]
    fn a_temporary_left_by_a_killed_start_is_removed_once_stale() {
        // Review of stop 51: a kill between the temporary's write and its removal left a
        // copy of the key beside it for good.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pan.key");
        let temporary = |name: &str, age: u64| {
            let p = dir.path().join(name);
            let f = std::fs::File::create(&p).unwrap();
            let then = std::time::SystemTime::now() - std::time::Duration::from_secs(age);
            f.set_modified(then).unwrap();
            p
        };
        let stale = temporary("pan.key.new-12-00ab", 120);
        let young = temporary("pan.key.new-13-00cd", 0);
        let other = temporary("other.key.new-14-00ef", 120);
        PanCipher::load_or_create(&path).unwrap();
        assert!(!stale.exists(), "a stale copy of a key is removed");
        assert!(
            young.exists() && other.exists(),
            "another start's, or another key's"
        );
    }

    #[test]
    fn a_key_file_of_the_wrong_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pan.key");
        std::fs::write(&path, b"short").unwrap();
        let err = PanCipher::load_or_create(&path).unwrap_err();
        assert!(
            matches!(err, StoreError::BadKey { found: 5, .. }),
            "{err:?}"
        );
        assert!(err.to_string().ends_with("it holds 5 bytes"), "{err}");
        // `openssl rand -hex 32 > pan.key`: the text of a key, and its newline.
        std::fs::write(&path, format!("{}\n", "ab".repeat(32))).unwrap();
        let said = PanCipher::load_or_create(&path).unwrap_err().to_string();
        assert!(
            said.contains(&path.display().to_string())
                && said.contains("32 raw bytes")
                && said
                    .contains("it holds 65 bytes (a key written as hex or base64 text is not one"),
            "{said}"
        );
    }
}
