//! Durable state: the journal, snapshots and the encryption of real PANs at rest.
//!
//! The cards keep everything in memory and write every change here first. This module
//! knows files, bytes and keys, not card rules:
//!
//! - [`journal`]: append-only records with group commit (one `fdatasync` per batch) and
//!   torn-tail detection, written to [`segment`] files that grow by zero-filled extents,
//!   each batch ending in a [`marker`] that tells damage to acknowledged records from a
//!   torn last batch;
//! - [`snapshot`]: all state in one file, written atomically, so restarts do not replay
//!   the journal from the beginning of time;
//! - [`crypto`]: AES-256-GCM for real PANs, under a key file made at first start;
//! - [`owed`]: the reversals owed to the issuer, until it has answered them.
//!
//! Data directory layout (`store.data_dir`):
//!
//! ```text
//! pan.key                    32-byte AES key (0600), unless store.key_file points elsewhere
//! store.id                   the data directory's identity, written into its snapshots
//! snapshot.bin               the last complete snapshot (replaced atomically by rename)
//! snapshot.tmp               a snapshot being written (removed if it fails, and at start)
//! journal-0000000007.log     journal segments not yet covered by the snapshot
//! reversals.log              reversals owed to the issuer (real PANs sealed), until answered
//! vpan.lock                  held (flock) by the process that has the directory open
//! ```

pub mod crypto;
pub mod identity;
pub mod journal;
pub mod marker;
pub mod owed;
pub mod segment;
pub mod snapshot;

use std::path::{Path, PathBuf};

/// The mode of the files the store creates (the journal, snapshots, the book of reversals
/// owed): real PANs in them are sealed, but the vPANs are not (they are written as
/// numbers), and a vPAN is a card number a merchant takes, so only vpan's own user may
/// read them, whatever the umask says.
pub(crate) const PRIVATE_FILE_MODE: u32 = 0o600;

/// Creates `path` afresh, [`PRIVATE_FILE_MODE`], for writing: a leftover file of that name
/// (a temporary file a stop left behind, perhaps made by an older vpan with a wider mode)
/// is removed first rather than truncated, since truncating keeps its mode.
pub(crate) fn create_private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(PRIVATE_FILE_MODE)
        .open(path)
}

/// A file written aside and renamed into place once whole (a snapshot, the rewritten book
/// of reversals owed). Dropped before [`TempFile::rename_to`] succeeded (a write that
/// failed half-way, on a full disk say), it is removed: left there, it would hold the room
/// the journal then lacks, and the next try, which starts a journal segment first, would
/// fail on it too.
pub(crate) struct TempFile {
    path: PathBuf,
    in_place: bool,
}

impl TempFile {
    /// Creates `path` afresh as [`create_private_file`] does; the file to write it through.
    pub(crate) fn create(path: PathBuf) -> std::io::Result<(TempFile, std::fs::File)> {
        let file = create_private_file(&path)?;
        Ok((
            TempFile {
                path,
                in_place: false,
            },
            file,
        ))
    }

    /// Where it is being written.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Renames it to `to`, after which it is no longer removed.
    pub(crate) fn rename_to(mut self, to: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.in_place = true;
        Ok(())
    }

    /// Removes a leftover of a process that stopped while writing one (a kill), at a
    /// start: it is nothing to read, and holds room.
    pub(crate) fn remove_leftover(path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {
                tracing::info!(file = %path.display(), "removed a temporary file a stop left behind")
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "could not remove a temporary file a stop left behind")
            }
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.in_place {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Where damaged bytes of `path` are kept for the operators before vpan cuts or rewrites
/// it: beside it, `<name>.damaged-<nanoseconds since the epoch>`, so that two starts never
/// write over each other's copy.
pub(crate) fn aside_path(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".damaged-{nanos}"));
    PathBuf::from(name)
}

/// Creates `dir` and any missing parent, each only for vpan's own user (0700), as the data
/// directory is: a directory that exists already keeps its mode.
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// The mode of `path` when its group or others have any access to it: the data directory
/// holds the journal, the snapshots and (by default) the PAN key, and the key and the API
/// token are secrets. Each file vpan makes is 0600, but one the operators made or changed,
/// or a directory others may list or enter, is theirs to set, so the start says so rather
/// than change it.
pub(crate) fn open_to_others(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

/// Warns, with its mode and the command that closes it, when the secret file `path` (what
/// it is: `what`) is open to group or others.
pub(crate) fn warn_if_open_to_others(path: &Path, what: &str) {
    if let Some(mode) = open_to_others(path) {
        tracing::warn!(
            path = %path.display(),
            mode = %format!("{mode:04o}"),
            "{what} is open to group or others; it should be 0600: chmod 600 {}",
            path.display()
        );
    }
}

/// What [`StoreError::BadKey`] adds for a file of `found` bytes: the length of 32 bytes
/// written as hex (64) or base64 (44) text, a newline after or not, as `openssl rand -hex
/// 32` writes a key (and as the MAC key file is written).
fn key_as_text_hint(found: usize) -> &'static str {
    if matches!(found, 44 | 45 | 64 | 65) {
        " (a key written as hex or base64 text is not one: decode it to its 32 bytes)"
    } else {
        ""
    }
}

/// [`StoreError::BadStoreId`]'s message: the way out depends on whether the snapshot names
/// a store.
fn bad_store_id_message(path: &Path, snapshot: &Option<identity::StoreId>) -> String {
    let fix = match snapshot {
        Some(id) => format!(
            "restore it from a backup of this directory, or, if this directory's snapshot.bin is its own, write {id} there (the store it names)"
        ),
        None => "restore it from a backup of this directory; or move it aside: the next start gives the directory a new identity (its snapshot names none)".into(),
    };
    format!(
        "{}: the data directory's identity is not 32 hexadecimal digits: {fix}",
        path.display()
    )
}

/// The `[store]` section of the configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory for the journal, snapshots and (by default) the key.
    pub data_dir: PathBuf,
    /// The 32-byte key encrypting real PANs; empty: `<data_dir>/pan.key`, made at first start.
    pub key_file: PathBuf,
    /// `vpan serve` snapshots the cards and the ledger once this many journal records were
    /// written since the last snapshot, then deletes the journal segments it covers: the
    /// disk stays bounded and a restart replays at most about this many records. 0: never
    /// (the journal grows without end; for tests and benchmarks only).
    pub snapshot_every_records: u64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig {
            data_dir: PathBuf::from("./vpan-data"),
            key_file: PathBuf::new(),
            snapshot_every_records: 2_000_000,
        }
    }
}

impl StoreConfig {
    /// Whether vpan makes the key itself when it is missing: only its own `pan.key` in the
    /// data directory. A key file the configuration names is provisioned by the operator;
    /// missing, it is a typo or an unmounted volume, not a cue to make a key there.
    pub fn makes_its_own_key(&self) -> bool {
        self.key_file.as_os_str().is_empty()
    }

    /// The key file actually used.
    pub fn key_path(&self) -> PathBuf {
        if self.key_file.as_os_str().is_empty() {
            self.data_dir.join(OWN_KEY_FILE)
        } else {
            self.key_file.clone()
        }
    }
}

/// Why the store could not do something. Cloneable, since one failed batch answers many
/// waiters. Never carries record contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{what}: {message}")]
    Io {
        /// What the store was doing.
        what: &'static str,
        /// The operating system's error kind.
        kind: std::io::ErrorKind,
        /// The operating system's message.
        message: String,
    },
    /// An earlier write or sync failed; the store accepts nothing until restarted.
    #[error("the journal failed earlier and accepts no more records (fail closed)")]
    Failed,
    /// The journal writer is gone (shutting down).
    #[error("the journal is closed")]
    Closed,
    /// The commit in progress has taken longer than the journal's stall limit (a disk that
    /// stopped answering): records not yet durable are answered this rather than waited
    /// for (fail closed), though they may still reach the disk once it answers again.
    #[error(
        "the journal's disk has not finished a commit for over {0:?}: failing closed until it does"
    )]
    Stalled(std::time::Duration),
    /// So many records waited for a disk that stopped answering that the journal failed
    /// (closed) rather than hold more in memory.
    #[error(
        "the journal's disk fell {0} records behind: the store failed closed; restart vpan once the disk answers"
    )]
    Backlog(usize),
    /// The key file for real card numbers could not be opened, read or made.
    #[error(
        "the key file {} (store.key_file; when empty, pan.key in store.data_dir): {what}: {message}",
        path.display()
    )]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What was being done with it.
        what: &'static str,
        /// The operating system's message.
        message: String,
    },
    /// The data directory could not be made or entered.
    #[error("the data directory {} (store.data_dir): {message}", path.display())]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// What went wrong, with the operating system's message.
        message: String,
    },
    /// The key file is not a 32-byte key.
    #[error(
        "the key file {} must hold exactly 32 raw bytes, as `head -c 32 /dev/urandom` makes; it holds {found} bytes{}",
        path.display(),
        key_as_text_hint(*found)
    )]
    BadKey {
        /// The file.
        path: PathBuf,
        /// How many bytes it holds.
        found: usize,
    },
    /// A real PAN could not be decrypted: wrong key or tampered data.
    #[error("a real card number could not be decrypted (wrong key file or damaged data)")]
    Decrypt,
    /// Another process has the data directory open.
    #[error("the data directory is in use by another vpan process")]
    Locked,
    /// `vpan rekey` copied this data directory under a new key: a switch on it now would
    /// approve what the copy, where the switch goes on, never hears of.
    #[error(
        "the data directory {} was copied under a new key by vpan rekey, into {copy} (or {copy}.rekeying, whole and checked, if the rekey stopped before renaming it; the copy may have been moved since, to where the switch now runs): run the switch on the copy, whose cards would miss what is approved here now. Only if the copy has never served (its approvals since would be lost), to go back to this directory and its key: delete the copy, then {}",
        marker.parent().unwrap_or(marker).display(),
        marker.display()
    )]
    Rekeyed {
        /// The file that says so, in the data directory.
        marker: PathBuf,
        /// Where the copy went, as the file says.
        copy: String,
    },
    /// A snapshot whose records do not add up to its end record's counts, or that has
    /// none: cut short or damaged after it was written whole. The journal segments it
    /// stood in for are gone, so starting on it would lose cards.
    #[error(
        "{}: the snapshot is incomplete: {what}; vpan will not start on it, since the journal it replaced is gone. Restore the data directory from a backup",
        path.display()
    )]
    SnapshotIncomplete {
        /// The snapshot file.
        path: PathBuf,
        /// What does not add up.
        what: String,
    },
    /// A snapshot in a format this vpan does not read (a newer vpan's, or damage that
    /// passed the header's checksum).
    #[error(
        "{}: the snapshot is in format version {version}, and this vpan reads versions 2 to {newest}: a newer vpan wrote it (run that one, or restore the data directory from before the upgrade), or the file is damaged",
        path.display()
    )]
    SnapshotVersion {
        /// The snapshot file.
        path: PathBuf,
        /// The version its header gives.
        version: u8,
        /// The newest this vpan reads.
        newest: u8,
    },
    /// The data directory's `store.id` does not hold an identity.
    #[error("{}", bad_store_id_message(path, snapshot))]
    BadStoreId {
        /// The file.
        path: PathBuf,
        /// The store the directory's snapshot names, if it names one.
        snapshot: Option<identity::StoreId>,
    },
    /// A snapshot written in another data directory (switches that share one key file,
    /// a restore mixed up between them): loaded, it would stand in for this directory's
    /// cards, and the start would delete the journal segments it names as covered.
    #[error(
        "{}: this snapshot was written in another data directory (store {snapshot}; this one is store {own}, as {} says): loaded, it would replace this directory's cards with that one's and delete this directory's journal. Put this directory's own snapshot back (from a backup of this directory); only if this snapshot is this directory's own and store.id was replaced, write {snapshot} into {}",
        path.display(),
        identity::path(path.parent().unwrap_or(path)).display(),
        identity::path(path.parent().unwrap_or(path)).display()
    )]
    ForeignSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// The store it names.
        snapshot: identity::StoreId,
        /// This data directory's.
        own: identity::StoreId,
    },
    /// A snapshot that names its store in a data directory without `store.id`.
    #[error(
        "{}: this snapshot names store {snapshot}, but the data directory has no {} to say it is this one: restore that file with the rest of the directory; only if the snapshot is this directory's own, write {snapshot} into it",
        path.display(),
        identity::ID_FILE
    )]
    MissingStoreId {
        /// The snapshot file.
        path: PathBuf,
        /// The store it names.
        snapshot: identity::StoreId,
    },
    /// Journal segments that must be there are not: the segments since the snapshot (or
    /// since the store began, without one) are numbered without gaps, each start and each
    /// rotation taking the next number, so a gap or a late first one is a file lost (a
    /// backup restored in part, a directory entry lost), and with it durable records.
    /// Every gap is named at once, so that a partial restore is mended in one go.
    #[error("{}", missing_segments_message(paths, *more, *without_snapshot))]
    MissingSegment {
        /// Where the first missing ones should be, in order (at most
        /// [`MISSING_SEGMENTS_NAMED`]).
        paths: Vec<PathBuf>,
        /// How many more are missing than `paths` names.
        more: u64,
        /// No snapshot was found and the first segment is missing: the snapshot that
        /// covered it may be what is missing instead.
        without_snapshot: bool,
    },
    /// A record or snapshot that passed its checksum does not decode.
    #[error("{0}: a record does not decode")]
    Corrupt(&'static str),
    /// The snapshot fails its checksums or is cut short: written whole and synced before
    /// it was renamed into place, it is damaged on disk, and it is the only copy of what
    /// the journal segments it covered held.
    #[error(
        "{path}: the snapshot is damaged ({what}); it holds the cards whose journal segments were deleted, so vpan does not start without it whole: restore it with the journal segments from one backup of the data directory"
    )]
    DamagedSnapshot {
        /// The snapshot file.
        path: PathBuf,
        /// What was found wrong, and where.
        what: String,
    },
    /// A journal segment other than the last is damaged. Only the last segment can end in
    /// a torn write (each one is synced whole before the next is opened), so this is
    /// damage to durable records, and the records after it would replay onto a state
    /// that lacks them: refused rather than cut (fail closed).
    #[error(
        "journal segment {} is damaged after byte {good_bytes} ({bad_bytes} bytes unreadable) and later segments follow it, so durable records are lost; vpan will not start on it. Restore the data directory from a backup, or accept the loss by cutting the file to its good part (truncate -s {good_bytes} {} && touch {})",
        path.display(),
        path.display(),
        journal::loss_accepted_path(path).display()
    )]
    DamagedSegment {
        /// The segment.
        path: PathBuf,
        /// Where its last good record ends.
        good_bytes: u64,
        /// What follows that cannot be read.
        bad_bytes: u64,
    },
    /// A journal segment other than the last ends without the closing marker written, and
    /// made durable, before any later segment is made ([`marker::CLOSES_SEGMENT`]): it was
    /// cut short at a record boundary, and the records cut from its end had been durable
    /// (and answered). Refused, unless its loss was accepted (a file beside it says so).
    #[error(
        "journal segment {} ends at byte {good_bytes} without the closing marker vpan writes before it starts a later segment, and later segments follow it: it was cut short (a copy taken while vpan wrote it, a truncate of the wrong file), and the records cut from its end had been made durable and answered; vpan will not start on it. Restore the data directory from a backup, or accept the loss of whatever was cut (touch {})",
        path.display(),
        journal::loss_accepted_path(path).display()
    )]
    UnclosedSegment {
        /// The segment.
        path: PathBuf,
        /// Where its records end now.
        good_bytes: u64,
    },
    /// The last journal segment is damaged in a batch that later batches follow. A crash
    /// tears only the last batch (the next one is written once its `fdatasync` returns), so
    /// this is damage to acknowledged records, found by the commit markers after it
    /// ([`marker`]), and cutting it would give their amounts back to the cards: refused.
    #[error(
        "journal segment {} is damaged after byte {good_bytes}, and {later_commits} later commits were written in the {bad_bytes} bytes after it, so the damaged records had been made durable (and answered); vpan will not start on it. Restore the data directory from a backup, or accept the loss by cutting the file to its good part, which drops the later commits too (copy it first, then truncate -s {good_bytes} {})",
        path.display(),
        path.display()
    )]
    DamagedAcknowledged {
        /// The segment.
        path: PathBuf,
        /// Where its last good record ends.
        good_bytes: u64,
        /// What follows that cannot be read.
        bad_bytes: u64,
        /// Intact commit markers of batches begun after the damage.
        later_commits: u64,
    },
}

/// The file `vpan rekey` leaves in a data directory it copied, naming the copy.
pub const REKEYED_FILE: &str = "rekeyed";

/// The key file vpan makes in the data directory when `store.key_file` is empty.
pub const OWN_KEY_FILE: &str = "pan.key";

/// The file a process locks (flock) while it has the data directory open.
pub const LOCK_FILE: &str = "vpan.lock";

/// Locks data directory `dir` for this process (the lock made when missing), for as long
/// as the file returned is open; [`StoreError::Locked`] when another process holds it.
pub fn lock_data_dir(dir: &Path) -> Result<std::fs::File, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(PRIVATE_FILE_MODE)
        .open(dir.join(LOCK_FILE))
        .map_err(StoreError::io("opening the data directory lock"))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(StoreError::io("locking the data directory")(e))
        }
    }
}

/// Writes [`REKEYED_FILE`] in `dir`, naming `copy` (as [`rekeyed_copy`] reads it), synced:
/// whole under another name, then renamed, so that a crash leaves no torn mark.
pub fn mark_rekeyed(dir: &Path, copy: &Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    let temp = dir.join(format!("{REKEYED_FILE}.tmp"));
    let written = create_private_file(&temp).and_then(|mut file| {
        file.write_all(copy.as_os_str().as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temp, dir.join(REKEYED_FILE))?;
        journal::sync_dir(dir)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// The copy a [`REKEYED_FILE`]'s bytes name (its path, then a newline), if any.
pub fn rekeyed_copy(bytes: &[u8]) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let path = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    (!path.is_empty()).then(|| PathBuf::from(std::ffi::OsStr::from_bytes(path)))
}

/// Refuses a data directory that `vpan rekey` copied (see [`StoreError::Rekeyed`]).
pub fn refuse_if_rekeyed(dir: &Path) -> Result<(), StoreError> {
    let marker = dir.join(REKEYED_FILE);
    match std::fs::read(&marker) {
        Ok(copy) => Err(StoreError::Rekeyed {
            copy: match rekeyed_copy(&copy) {
                Some(copy) => copy.display().to_string().chars().take(4096).collect(),
                None => "a copy it does not name (the file is empty)".to_string(),
            },
            marker,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io("reading the data directory's rekeyed file")(
            e,
        )),
    }
}

/// A card number in `file` that the key at `key_path` cannot open, said with both: the
/// usual cause is another key file (a volume mounted from another switch, a key restored
/// from the wrong backup), which the operator must be able to find.
pub fn naming_the_key(key_path: &Path, file: &Path) -> impl Fn(StoreError) -> StoreError {
    let (key_path, file) = (key_path.to_path_buf(), file.to_path_buf());
    move |e| match e {
        StoreError::Decrypt => StoreError::KeyFile {
            path: key_path.clone(),
            what: "opening the card numbers sealed under it",
            message: format!(
                "{}: one could not be decrypted: it was sealed under another key (after a vpan rekey, store.key_file or VPAN_STORE_KEY_FILE must name the new key), or the file is damaged",
                file.display()
            ),
        },
        e => e,
    }
}

/// How many missing journal segments [`StoreError::MissingSegment`] names; the rest are
/// counted. A snapshot damaged into naming a far segment would otherwise list millions.
pub const MISSING_SEGMENTS_NAMED: usize = 10;

fn missing_segments_message(paths: &[PathBuf], more: u64, without_snapshot: bool) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let (these, them, one_each) = match (names.len() as u64).saturating_add(more) {
        1 => ("journal segment", "it", "it an empty file"),
        _ => ("journal segments", "them", "each an empty file"),
    };
    let more = match more {
        0 => String::new(),
        n => format!(" and {n} more after them"),
    };
    // Each with the file that accepts the loss of what it held: an empty segment before one
    // that opens with a marker is one cut short ([`StoreError::UnclosedSegment`]).
    let touched: Vec<String> = paths
        .iter()
        .map(|p| {
            format!(
                "{} {}",
                p.display(),
                journal::loss_accepted_path(p).display()
            )
        })
        .collect();
    format!(
        "{these} {}{more} {}{}; the records in {them} (cards, approvals) would be lost, so vpan will not start without {them}. Restore the data directory from a backup, or accept the loss by making {one_each}, beside the file that says its loss is accepted (touch {}{})",
        names.join(", "),
        if names.len() == 1 && more.is_empty() {
            "is missing"
        } else {
            "are missing"
        },
        if without_snapshot {
            ", or snapshot.bin that would stand in for the first"
        } else {
            ""
        },
        touched.join(" "),
        if more.is_empty() {
            ""
        } else {
            "; and so the ones after them"
        },
    )
}

impl StoreError {
    /// Wraps an I/O error with what the store was doing (for `map_err`).
    pub fn io(what: &'static str) -> impl Fn(std::io::Error) -> StoreError {
        move |e| StoreError::Io {
            what,
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_leftover_file_is_replaced_by_a_private_one_and_a_new_directory_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("a").join("data");
        create_private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&dir.path().join("a")), 0o700, "parents made too");
        // A temporary file an older vpan left readable by all.
        let leftover = data.join("snapshot.tmp");
        std::fs::write(&leftover, b"old").unwrap();
        std::fs::set_permissions(&leftover, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(create_private_file(&leftover).unwrap());
        assert_eq!(mode(&leftover), PRIVATE_FILE_MODE);
        assert_eq!(std::fs::metadata(&leftover).unwrap().len(), 0);
    }

    #[test]
    fn a_data_directory_open_to_group_or_others_is_found_with_its_mode() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        create_private_dir(&data).unwrap();
        assert_eq!(open_to_others(&data), None);
        for mode in [0o755, 0o740, 0o701] {
            std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).unwrap();
            assert_eq!(open_to_others(&data), Some(mode));
        }
    }
}
