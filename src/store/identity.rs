//! The data directory's identity: 16 random bytes made at its first start, kept in
//! `store.id` and written into every snapshot. Switches may share one key file (provisioned
//! once for several), and then nothing else tells their snapshots apart: one put in
//! another's data directory (a restore mixed up between them) read whole, its cards in
//! place of that directory's own, and the start deleted the journal segments it named as
//! covered, the only copy of that directory's approvals. It is refused now, by name.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use rand::RngExt;

use super::StoreError;
use super::journal::sync_dir;

/// The file, in the data directory.
pub const ID_FILE: &str = "store.id";
/// Written aside, then renamed into place.
const TEMP_FILE: &str = "store.id.tmp";

/// A data directory's identity.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StoreId(pub [u8; 16]);

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Where the identity of the data directory `dir` is kept.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(ID_FILE)
}

/// The identity of the data directory `dir`; `None` when it has none yet. One that does
/// not read is [`StoreError::BadStoreId`], naming `snapshot`, the store the directory's
/// snapshot names (if it names one), as the one to write there.
pub fn read(dir: &Path, snapshot: Option<StoreId>) -> Result<Option<StoreId>, StoreError> {
    let path = path(dir);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("reading the data directory's store.id")(e)),
    };
    parse(bytes.trim_ascii())
        .map(Some)
        .ok_or(StoreError::BadStoreId { path, snapshot })
}

/// Reads 32 hexadecimal digits.
fn parse(text: &[u8]) -> Option<StoreId> {
    let mut id = [0u8; 16];
    if text.len() != 32 {
        return None;
    }
    for (byte, pair) in id.iter_mut().zip(text.chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(StoreId(id))
}

/// Gives the data directory `dir` a new identity, drawn at random.
pub fn create(dir: &Path) -> Result<StoreId, StoreError> {
    let mut id = [0u8; 16];
    rand::rng().fill(&mut id[..]);
    let id = StoreId(id);
    write(dir, id)?;
    tracing::info!(store = %id, file = %path(dir).display(), "gave the data directory its identity");
    Ok(id)
}

/// Writes `id` as the identity of `dir` (a copy of a data directory, made by `vpan
/// rekey`, keeps its original's), durably: aside, synced, renamed, the directory synced.
pub fn write(dir: &Path, id: StoreId) -> Result<(), StoreError> {
    let failed = StoreError::io("writing the data directory's store.id");
    let (temp, mut file) = super::TempFile::create(dir.join(TEMP_FILE)).map_err(&failed)?;
    writeln!(file, "{id}").map_err(&failed)?;
    file.sync_all().map_err(&failed)?;
    drop(file);
    temp.rename_to(&path(dir)).map_err(&failed)?;
    sync_dir(dir).map_err(&failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_is_made_once_read_back_and_a_damaged_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), None).unwrap(), None);
        let id = create(dir.path()).unwrap();
        assert_eq!(read(dir.path(), None).unwrap(), Some(id));
        assert_eq!(id.to_string().len(), 32);
        assert_ne!(create(tempfile::tempdir().unwrap().path()).unwrap(), id);
        let file = path(dir.path());
        for bad in [&b""[..], b"xyz", &[b'0'; 31], &[b'g'; 32], &[0xff; 32]] {
            std::fs::write(&file, bad).unwrap();
            // Named with its path, and the way out: the store the snapshot names, when it
            // names one, or how to learn it.
            let err = read(dir.path(), Some(id)).unwrap_err().to_string();
            assert!(
                err.starts_with(&file.display().to_string())
                    && err.contains(&format!("write {id} there")),
                "{bad:?}: {err}"
            );
            let err = read(dir.path(), None).unwrap_err().to_string();
            assert!(err.contains("move it aside"), "{bad:?}: {err}");
        }
    }
}
