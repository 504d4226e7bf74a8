//! What `vpan rekey` refuses before it copies anything, each said with what to fix: the
//! paths (the data directory, the new one, the new key), what an earlier rekey left, a
//! switch running, and a new key that is not one or is the key in use.

use std::path::{Path, PathBuf};

use crate::cards::vault::holds_sealed_card_numbers;
use crate::config::Config;
use crate::store::crypto::PanCipher;
use crate::store::{
    OWN_KEY_FILE, REKEYED_FILE, StoreConfig, StoreError, lock_data_dir, rekeyed_copy,
};

/// The data directory to copy, resolved (symbolic links and `..`), once it is there and
/// holds something to copy: opening the store would make one that is not, and a typo
/// would copy it empty.
pub(super) fn check_from(store: &StoreConfig) -> Result<PathBuf, String> {
    let said = |what: String| format!("store.data_dir {}: {what}", store.data_dir.display());
    let from = std::fs::canonicalize(&store.data_dir).map_err(|e| {
        said(if e.kind() == std::io::ErrorKind::NotFound {
            "not there; name the switch's data directory".to_string()
        } else {
            e.to_string()
        })
    })?;
    if !holds_sealed_card_numbers(&from).map_err(|e| said(e.to_string()))? {
        return Err(said(
            "holds no store (no snapshot, journal records or reversals owed); name the switch's data directory".to_string(),
        ));
    }
    Ok(from)
}

/// The new data directory, resolved, and the directory beside it the copy is written in
/// first. Refuses one inside the data directory, or whose working name is it.
pub(super) fn check_into(from: &Path, into: &Path) -> Result<(PathBuf, PathBuf), String> {
    let said = |what: &str| format!("--into {}: {what}", into.display());
    let name = match into.components().next_back() {
        Some(std::path::Component::Normal(name)) => name.to_os_string(),
        _ => return Err(said("name a directory")),
    };
    let parent = into
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let parent = std::fs::canonicalize(parent).map_err(|e| {
        said(&format!(
            "its parent {}: {e} (make it first, writable by the switch's user: the copy is made in it, beside --into)",
            parent.display()
        ))
    })?;
    let into = parent.join(&name);
    if into.starts_with(from) {
        return Err(said(&format!(
            "that is inside the data directory {}; name a new directory beside it",
            from.display()
        )));
    }
    let mut work_name = name;
    work_name.push(".rekeying");
    let work = parent.join(work_name);
    if work == from {
        return Err(said(&format!(
            "the copy would be made first as {}, the data directory itself; name another",
            work.display()
        )));
    }
    Ok((into, work))
}

/// Refuses an `into` that is a symbolic link, a mount point (the copy, made beside it on
/// its parent's filesystem, could not be renamed onto it), or not empty.
pub(super) fn check_target(into: &Path) -> Result<(), String> {
    let said = |what: &str| format!("--into {}: {what}", into.display());
    match std::fs::symlink_metadata(into) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(said("a symbolic link; name the directory itself"));
        }
        Ok(meta) => {
            use std::os::unix::fs::MetadataExt;
            let parent = into.parent().unwrap_or(Path::new("/"));
            let parent_meta = std::fs::metadata(parent).map_err(|e| said(&e.to_string()))?;
            if meta.dev() != parent_meta.dev() {
                return Err(said(
                    "a mount point; name a new directory inside it (the copy is made beside the one named, then renamed onto it)",
                ));
            }
            let mut entries = std::fs::read_dir(into).map_err(|e| said(&e.to_string()))?;
            if entries.next().is_some() {
                return Err(said(
                    "not empty; name a new directory (the copy is a whole data directory)",
                ));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(said(&e.to_string())),
    }
    Ok(())
}

/// Refuses what an earlier rekey of `from` left, saying what it is: the directory it
/// writes in, `work` (whole and checked when `from` is marked copied, by a mark naming
/// `into` or torn empty, and then named with the key that opens it; half made otherwise),
/// or the mark alone (copied already).
pub(super) fn check_leftovers(
    config: &Config,
    from: &Path,
    into: &Path,
    work: &Path,
    key: Option<&Path>,
) -> Result<(), String> {
    if work.symlink_metadata().is_err() {
        return crate::store::refuse_if_rekeyed(from).map_err(|e| e.to_string());
    }
    let mark = std::fs::read(from.join(REKEYED_FILE)).ok();
    let ours = mark
        .as_deref()
        .is_some_and(|mark| rekeyed_copy(mark).is_none_or(|copy| copy == into));
    if !ours {
        return Err(format!(
            "{} is there, half made by a rekey that was stopped: delete it (`rm -r`; it holds the card numbers sealed under the new key, and that key when vpan made it) and run again",
            work.display()
        ));
    }
    // Whole and checked when it was made; opened again here, so that a key made anew since
    // (a runbook run again from its top) is found before the copy is put in place. The key
    // given, else (or also: the first run may have been given none) the copy's own.
    let keys: Vec<PathBuf> = key
        .map(Path::to_path_buf)
        .into_iter()
        .chain(Some(work.join(OWN_KEY_FILE)).filter(|own| own.exists()))
        .collect();
    let mut failures = Vec::new();
    for key in &keys {
        match super::open_copy(config, work, key) {
            Ok(_) => {
                return Err(format!(
                    "{} holds the whole, checked copy of a rekey stopped just before renaming it ({} is marked copied): rename it (`mv -T {} {}`) and go on; it opens with the key {} (store.key_file {})",
                    work.display(),
                    from.display(),
                    work.display(),
                    into.display(),
                    key.display(),
                    if key.starts_with(work) {
                        "empty: the copy's own pan.key".to_string()
                    } else {
                        format!("= {:?}", key.display().to_string())
                    }
                ));
            }
            Err(e) => failures.push(format!("{}: {e}", key.display())),
        }
    }
    Err(format!(
        "{} holds the copy of a rekey stopped just before renaming it ({} is marked copied), but no key at hand opens it ({}). If the rekey that made it was given another --new-key-file, run again with that one; if the key it was sealed under was made anew since, the copy is lost with it: delete {} and {}, and run again",
        work.display(),
        from.display(),
        if failures.is_empty() {
            "none given, and it has no pan.key".to_string()
        } else {
            failures.join("; ")
        },
        work.display(),
        from.join(REKEYED_FILE).display()
    ))
}

/// What is said of a data directory a switch or another rekey holds.
pub(super) fn running(from: &Path) -> String {
    format!(
        "{}: a switch (or another rekey) runs on it; stop it first",
        from.display()
    )
}

/// Refuses a data directory a switch or a rekey holds, before what they write there is
/// looked at (a rekey running is not one that stopped). The lock is let go at once: the
/// store's open takes it for the rekey.
pub(super) fn check_not_running(from: &Path) -> Result<(), String> {
    match lock_data_dir(from) {
        Ok(_) => Ok(()),
        Err(StoreError::Locked) => Err(running(from)),
        Err(e) => Err(format!("{}: {e}", from.display())),
    }
}

/// The new key's file.
pub(super) struct NewKey {
    /// As given (made absolute): what the switch's `store.key_file` is to name. A secret
    /// mounted through a link that moves (Kubernetes' `..data`) stays found by it.
    pub(super) given: PathBuf,
    /// Links and `..` resolved: where it is, to compare with the data directory.
    pub(super) resolved: PathBuf,
}

/// The new key's file, once it is there and outside the data directory `from` (deleted
/// once the copy serves).
pub(super) fn check_new_key(key: &Path, from: &Path) -> Result<NewKey, String> {
    let said = |what: String| format!("--new-key-file {}: {what}", key.display());
    match std::fs::canonicalize(key) {
        Ok(resolved) if resolved.starts_with(from) => Err(said(format!(
            "that is inside the data directory {}, which is deleted once the copy serves; keep the new key outside both data directories",
            from.display()
        ))),
        Ok(resolved) => Ok(NewKey {
            given: std::path::absolute(key).map_err(|e| said(e.to_string()))?,
            resolved,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(said(format!(
            "not there; make it first (32 random bytes, mode 0600: `(umask 077 && head -c 32 /dev/urandom > {})`), or, when store.key_file is empty, leave the flag out for vpan to make pan.key in the new data directory",
            key.display()
        ))),
        Err(e) => Err(said(e.to_string())),
    }
}

/// Reads the new key, refusing one that is not a key or is the key in use (`old_key`,
/// when there).
pub(super) fn load_new_key(key: &NewKey, old_key: &Path) -> Result<PanCipher, String> {
    let said = |what: String| format!("--new-key-file {}: {what}", key.given.display());
    let cipher = PanCipher::load(&key.resolved).map_err(|e| said(e.to_string()))?;
    if old_key.exists() {
        let old = PanCipher::load(old_key).map_err(|e| e.to_string())?;
        if same_key(&old, &cipher) {
            return Err(said(format!(
                "it holds the key in use ({}); make a new one",
                old_key.display()
            )));
        }
    }
    Ok(cipher)
}

/// True when `a` and `b` hold the same key: what one seals, the other opens.
fn same_key(a: &PanCipher, b: &PanCipher) -> bool {
    b.open_bytes(&a.seal_bytes(b"probe", b"rekey"), b"rekey")
        .is_ok()
}
