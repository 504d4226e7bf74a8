//! `vpan rekey`: the data directory copied under a new PAN key, for a key's change at the
//! end of its cryptoperiod or on suspicion that it leaked.
//!
//! The copy is a new data directory, not the old one rewritten in place: the old key keeps
//! opening the old directory until the operators have the switch running on the new one,
//! so a rekey that fails, or a copy they do not trust, costs nothing but its directory.
//! Rewriting in place would have to change the key, the snapshot, the journal and the book
//! of reversals owed as one step, which the filesystem cannot do.
//!
//! With the switch stopped (the data directory's lock makes sure), the store is opened as a
//! start opens it, and everything it holds is written again under the new key into a
//! directory beside the one asked for: the cards and remembered transactions as a
//! snapshot (each real PAN sealed again under the new key, with its nonce of issuance, so
//! nonces still count cards issued under each key), the reversals owed to the issuer (each
//! sealed again under its number), the STANs changed toward the issuer within the hour,
//! and the API's token and self-signed pair when vpan made them there. That directory is
//! synced and renamed into place, so the name asked for holds a whole copy or nothing.
//! The copy is then opened under the new key, as the next start will, and compared card by
//! card and transaction by transaction with what it was made from.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cards::vault::holds_sealed_card_numbers;
use crate::cards::{Cards, LedgerConfig};
use crate::config::Config;
use crate::store::crypto::PanCipher;
use crate::store::journal::sync_dir;
use crate::store::owed::{self, Debt, OwedReversals, Stamp};
use crate::store::{REKEYED_FILE, StoreConfig, create_private_dir, naming_the_key};
use crate::switch::issuer::RESTAMPED_KEPT;

/// Options of `vpan rekey`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The switch's TOML configuration, whose store.data_dir and store.key_file say what
    /// is copied; without it the built-in defaults. VPAN_<SECTION>_<KEY> variables
    /// override it, as for `vpan serve`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The new data directory: not there yet, or empty. It is written under a name beside
    /// it (DIR.rekeying) and renamed into place once whole.
    #[arg(long, value_name = "DIR")]
    pub into: PathBuf,
    /// The new key: a file of 32 random bytes, mode 0600, made beforehand (`head -c 32
    /// /dev/urandom`). Without it, vpan makes one as pan.key in the new data directory.
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
}

/// Files of the data directory that hold neither cards nor debts, copied as they are when
/// vpan made them there: the API's token and its self-signed pair.
const CARRIED_FILES: [&str; 3] = ["api-token", "tls-cert.pem", "tls-key.pem"];

/// What a rekey wrote.
#[derive(Debug)]
pub struct Rekeyed {
    /// The data directory copied.
    pub from: PathBuf,
    /// Its key.
    pub from_key: PathBuf,
    /// Whether that key is in that directory (`pan.key`), and goes with it.
    pub old_key_in_old_dir: bool,
    /// The new data directory.
    pub into: PathBuf,
    /// The new key.
    pub key: PathBuf,
    /// Whether the new key is the new directory's own `pan.key` (`store.key_file` empty).
    pub key_in_data_dir: bool,
    /// Cards copied.
    pub cards: u64,
    /// Remembered transactions copied.
    pub transactions: u64,
    /// Reversals owed to the issuer copied.
    pub reversals_owed: usize,
    /// Holds the issuer never answered, counted as spent when the old directory was opened
    /// (as a start would have; the copy's start then finds none).
    pub holds_counted_as_spent: u64,
    /// Bytes of a torn journal tail cut when it was opened (kept aside there).
    pub bytes_cut: u64,
}

impl std::fmt::Display for Rekeyed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "rekeyed: copied from {} into {} under the key in {}, and read back the same under it: cards {}, remembered transactions {}, reversals owed to the issuer {}",
            self.from.display(),
            self.into.display(),
            self.key.display(),
            self.cards,
            self.transactions,
            self.reversals_owed,
        )?;
        writeln!(
            f,
            "the old directory was opened as a start opens it: holds the issuer never answered counted as spent {}, bytes of a torn journal tail cut {}",
            self.holds_counted_as_spent, self.bytes_cut
        )?;
        let key_file = if self.key_in_data_dir {
            String::new()
        } else {
            self.key.display().to_string()
        };
        // Said without the old directory's path where it matters: the runbook moves the
        // copy to that path, and this report is what the operator keeps.
        let old_key = if self.old_key_in_old_dir {
            "its pan.key, which goes with it (not the copy's pan.key)".to_string()
        } else {
            self.from_key.display().to_string()
        };
        write!(
            f,
            "next: run the switch on the copy: move the old directory aside and the copy to where it was (or set store.data_dir = {:?}, and VPAN_STORE_DATA_DIR where the service sets it), store.key_file = {:?}; once it serves and its \"store recovered\" line counts these cards, delete the old directory (the one holding the file `rekeyed`, which a start refuses) and its backups, and destroy the old key: {old_key}",
            self.into.display().to_string(),
            key_file,
        )
    }
}

/// `vpan rekey`: reads the configuration as `vpan serve` does, copies, prints the report.
pub fn run_cli(args: Args) -> Result<(), String> {
    // Every real PAN of the store is in this process's memory, in the clear: a core dump
    // (a crash, a signal) must not write them out. The systemd unit does the same for
    // `vpan serve` (LimitCORE=0); a rekey is run by hand, outside it.
    #[cfg(target_os = "linux")]
    rustix::process::setrlimit(
        rustix::process::Resource::Core,
        rustix::process::Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )
    .map_err(|e| format!("turning core dumps off: {e}"))?;
    // And for a core pattern that pipes to a collector, which the limit does not bind; it
    // keeps other processes of the same user from reading this one's memory, too.
    #[cfg(target_os = "linux")]
    rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
        .map_err(|e| format!("turning core dumps off: {e}"))?;
    let env = crate::config::vpan_env_vars().map_err(|e| e.to_string())?;
    let config = Config::load(args.config.as_deref(), env).map_err(|e| e.to_string())?;
    let done = rekey(&config, &args.into, args.new_key_file.as_deref())?;
    println!("{done}");
    Ok(())
}

/// Copies the data directory `config` names into `into` under the key in `new_key` (made
/// as `into`'s `pan.key` when `None`), and checks the copy reads back the same.
pub fn rekey(config: &Config, into: &Path, new_key: Option<&Path>) -> Result<Rekeyed, String> {
    let store = &config.store;
    let from = check_from(store)?;
    let (into, work) = check_into(&from, into)?;
    check_not_running(&from)?;
    let new_key = match new_key {
        Some(key) => Some(check_new_key(key, &from)?),
        None if store.makes_its_own_key() => None,
        None => {
            return Err(format!(
                "--new-key-file is needed: store.key_file keeps the key apart from the data directory ({}), and the new one should be too (made beforehand, 32 random bytes, mode 0600), not made beside the data it opens",
                store.key_file.display()
            ));
        }
    };

    check_leftovers(
        config,
        &from,
        &into,
        &work,
        new_key.as_ref().map(|key| key.resolved.as_path()),
    )?;
    check_target(&into)?;

    // The store as a start finds it: holds the issuer never answered are counted in doubt
    // (and journaled so), the damaged tail a crash left is cut. Its lock keeps a running
    // switch from changing it meanwhile. Every transaction it remembers is kept, however
    // old and however many, in every queue: the switch on the copy forgets by its own
    // settings at its start, as it would here, and a rekey run with tighter
    // `cards.ledger_*` settings than the switch's (another file, a VPAN_ variable left
    // out) must not forget for it. The table grows with what is read, not sized ahead.
    let old_key = store.key_path();
    // The new key read, and told from the old, before the store is opened: a rekey refused
    // for its key leaves the old directory as it found it.
    let given_cipher = new_key
        .as_ref()
        .map(|key| load_new_key(key, &old_key))
        .transpose()?;
    let ledger = LedgerConfig::unbounded();
    let (cards, recovered) = Cards::open(&config.cards, store, ledger).map_err(|e| match e {
        // Started since the look above.
        crate::cards::OpenError::Store(crate::store::StoreError::Locked) => format!(
            "{}: a switch (or another rekey) runs on it; stop it first",
            from.display()
        ),
        e => format!("opening {}: {e}", from.display()),
    })?;
    // The old key goes with the old directory when it is in it (resolved as `from` is):
    // the report must not name a path the copy may be moved to.
    let old_key_in_old_dir = store.makes_its_own_key()
        || std::fs::canonicalize(&old_key).is_ok_and(|key| key.starts_with(&from));
    let old_cipher = PanCipher::load_or_create(&old_key).map_err(|e| e.to_string())?;
    let now = crate::cards::card::unix_now();
    let (_book, debts, stamps) =
        OwedReversals::open(&from, old_cipher.clone(), now, RESTAMPED_KEPT.as_secs())
            .map_err(naming_the_key(&old_key, &from.join(owed::FILE)))
            .map_err(|e| format!("opening the reversals owed in {}: {e}", from.display()))?;
    create_private_dir(&work).map_err(|e| format!("making {}: {e}", work.display()))?;
    let given_key = new_key.as_ref().map(|key| key.given.clone());
    let (key_path, key_in_data_dir, new_cipher) = match (new_key, given_cipher) {
        (Some(key), Some(cipher)) => (key.resolved, false, cipher),
        _ => {
            let made = work.join("pan.key");
            let cipher = PanCipher::load_or_create(&made).map_err(|e| e.to_string())?;
            (made, true, cipher)
        }
    };
    let written = |what: &str| {
        let work = work.display().to_string();
        let what = what.to_string();
        move |e: crate::store::StoreError| format!("writing {what} into {work}: {e}")
    };
    let (card_count, transactions) = cards
        .copy_rekeyed(&work, &new_cipher)
        .map_err(written("the cards"))?;
    OwedReversals::write_copy(&work, &new_cipher, &debts, &stamps, now)
        .map_err(written("the reversals owed"))?;
    carry_files(&from, &work)?;
    sync_dir(&work).map_err(|e| format!("syncing {}: {e}", work.display()))?;
    let reversals_owed = debts.len();
    // The key as the next start reads it, from its file.
    read_back(
        config, ledger, &work, &key_path, &cards, debts, &stamps, now,
    )?;
    // From now on the switch belongs on the copy: one started here by mistake (or by a
    // supervisor) would approve what the copy never counts. Marked before the rename, so
    // that no moment has a copy standing and this directory still startable.
    mark_copied(&from, &into, &work)?;
    // Only a copy that read back the same, whole, under the name asked for (an empty
    // directory there is replaced).
    if let Err(e) = std::fs::rename(&work, &into) {
        // Startable again, as no copy stands.
        let unmarked = std::fs::remove_file(from.join(REKEYED_FILE)).and_then(|()| sync_dir(&from));
        return Err(match unmarked {
            Ok(()) => format!(
                "renaming {} to {}: {e}; {} is no longer marked copied, so do not rename the copy by hand (a copy standing beside a directory a switch may start on): delete it, fix the cause, and run again",
                work.display(),
                into.display(),
                from.display()
            ),
            Err(unmark) => format!(
                "renaming {} to {}: {e}; and {} could not be taken back ({unmark}): the copy is whole and checked, and the old directory refuses to start; rename the copy by hand (`mv -T {} {}`) and go on",
                work.display(),
                into.display(),
                from.join(REKEYED_FILE).display(),
                work.display(),
                into.display()
            ),
        });
    }
    if let Some(parent) = into.parent() {
        sync_dir(parent).map_err(|e| format!("syncing {}: {e}", parent.display()))?;
    }
    Ok(Rekeyed {
        from,
        from_key: std::path::absolute(&old_key).unwrap_or(old_key),
        old_key_in_old_dir,
        key: match (key_in_data_dir, given_key) {
            (true, _) => into.join("pan.key"),
            (false, Some(given)) => given,
            (false, None) => key_path,
        },
        into,
        key_in_data_dir,
        cards: card_count,
        transactions,
        reversals_owed,
        holds_counted_as_spent: recovered.holds_counted_as_spent,
        bytes_cut: recovered.bytes_cut,
    })
}

/// Opens the copy in `work` under the key in `key_path`, as the next start will, and
/// compares it with `cards`, `debts` and `stamps`, what it was made from.
#[allow(clippy::too_many_arguments)] // what was copied, and where: all of it is compared
fn read_back(
    config: &Config,
    ledger: LedgerConfig,
    work: &Path,
    key_path: &Path,
    cards: &Cards,
    mut debts: Vec<Debt>,
    stamps: &[Stamp],
    now: u64,
) -> Result<(), String> {
    let not_the_same = |what: String| {
        format!(
            "the copy in {} does not read back the same ({what}): it is left there, not renamed; delete it",
            work.display()
        )
    };
    let store = StoreConfig {
        data_dir: work.to_path_buf(),
        key_file: key_path.to_path_buf(),
        ..config.store.clone()
    };
    let (copy, _) =
        Cards::open(&config.cards, &store, ledger).map_err(|e| not_the_same(e.to_string()))?;
    if let Some(difference) = cards.first_difference(&copy) {
        return Err(not_the_same(difference));
    }
    drop(copy);
    let cipher = PanCipher::load_or_create(key_path).map_err(|e| e.to_string())?;
    let (_book, mut debts_back, stamps_back) =
        OwedReversals::open(work, cipher, now, RESTAMPED_KEPT.as_secs())
            .map_err(naming_the_key(key_path, &work.join(owed::FILE)))
            .map_err(|e| not_the_same(e.to_string()))?;
    // Read in the order they were written, which two tasks make; copied by number.
    debts.sort_by_key(|d| d.id);
    debts_back.sort_by_key(|d| d.id);
    if debts_back != debts || stamps_back != stamps {
        return Err(not_the_same(format!(
            "{} reversals owed and {} changed STANs read back, of {} and {}",
            debts_back.len(),
            stamps_back.len(),
            debts.len(),
            stamps.len()
        )));
    }
    Ok(())
}

/// The data directory to copy, resolved (symbolic links and `..`), once it is there and
/// holds something to copy: opening the store would make one that is not, and a typo
/// would copy it empty.
fn check_from(store: &StoreConfig) -> Result<PathBuf, String> {
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
fn check_into(from: &Path, into: &Path) -> Result<(PathBuf, PathBuf), String> {
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
fn check_target(into: &Path) -> Result<(), String> {
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
/// writes in, `work` (whole and checked when `from` is marked copied into `into`, but then
/// only if `key` still opens it; half made otherwise), or the mark alone (copied already).
fn check_leftovers(
    config: &Config,
    from: &Path,
    into: &Path,
    work: &Path,
    key: Option<&Path>,
) -> Result<(), String> {
    let marked_into = std::fs::read_to_string(from.join(REKEYED_FILE))
        .ok()
        .map(|copy| PathBuf::from(copy.trim_end_matches('\n')));
    if work.symlink_metadata().is_err() {
        return crate::store::refuse_if_rekeyed(from).map_err(|e| e.to_string());
    }
    if marked_into.as_deref() != Some(into) {
        return Err(format!(
            "{} is there, half made by a rekey that was stopped: delete it (`rm -r`; it holds the card numbers sealed under the new key, and that key when vpan made it) and run again",
            work.display()
        ));
    }
    // Whole and checked when it was made; opened again here, so that a key made anew since
    // (a runbook run again from its top) is found before the copy is put in place.
    let key = key.map_or_else(|| work.join("pan.key"), Path::to_path_buf);
    let store = StoreConfig {
        data_dir: work.to_path_buf(),
        key_file: key.clone(),
        ..config.store.clone()
    };
    if let Err(e) = Cards::open(&config.cards, &store, LedgerConfig::unbounded()) {
        return Err(format!(
            "{} holds the copy of a rekey stopped just before renaming it ({} is marked copied into {}), but it does not open with the key {}: {e}. If the rekey that made it was given another --new-key-file, run again with that one; if the key it was sealed under was made anew since, the copy is lost with it: delete {} and {}, and run again",
            work.display(),
            from.display(),
            into.display(),
            key.display(),
            work.display(),
            from.join(REKEYED_FILE).display()
        ));
    }
    Err(format!(
        "{} holds the whole, checked copy of a rekey stopped just before renaming it ({} is marked copied into {}; it opens with the key {}): rename it (`mv -T {} {}`) and go on",
        work.display(),
        from.display(),
        into.display(),
        key.display(),
        work.display(),
        into.display()
    ))
}

/// Refuses a data directory a switch or a rekey holds, before anything else is looked at
/// there (a rekey running is not one that stopped). The lock is let go at once: the store's
/// open takes it for the rekey.
fn check_not_running(from: &Path) -> Result<(), String> {
    let running = || {
        format!(
            "{}: a switch (or another rekey) runs on it; stop it first",
            from.display()
        )
    };
    match std::fs::OpenOptions::new()
        .write(true)
        .open(from.join("vpan.lock"))
    {
        Ok(lock) => match lock.try_lock() {
            Ok(()) => Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => Err(running()),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(format!("{}: locking it: {e}", from.display()))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: opening its lock: {e}", from.display())),
    }
}

/// The new key's file.
struct NewKey {
    /// As given (made absolute): what the switch's `store.key_file` is to name. A secret
    /// mounted through a link that moves (Kubernetes' `..data`) stays found by it.
    given: PathBuf,
    /// Links and `..` resolved: where it is, to compare with the data directory.
    resolved: PathBuf,
}

/// The new key's file, once it is there and outside the data directory `from` (deleted
/// once the copy serves).
fn check_new_key(key: &Path, from: &Path) -> Result<NewKey, String> {
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

/// Leaves [`REKEYED_FILE`] in `from`, naming `into`, synced: a start there is refused. On
/// failure none is left, and the copy in `work` is not to be renamed.
fn mark_copied(from: &Path, into: &Path, work: &Path) -> Result<(), String> {
    let marker = from.join(REKEYED_FILE);
    let written = crate::store::create_private_file(&marker).and_then(|mut file| {
        writeln!(file, "{}", into.display())?;
        file.sync_all()?;
        sync_dir(from)
    });
    written.map_err(|e| {
        let _ = std::fs::remove_file(&marker);
        format!(
            "writing {}: {e}; the copy is whole and checked in {}, but not renamed, since a copy must not stand while {} can still be served: fix the cause, delete {}, and run again",
            marker.display(),
            work.display(),
            from.display(),
            work.display()
        )
    })
}

/// Reads the new key, refusing one that is not a key or is the key in use (`old_key`,
/// when there).
fn load_new_key(key: &NewKey, old_key: &Path) -> Result<PanCipher, String> {
    let said = |what: String| format!("--new-key-file {}: {what}", key.given.display());
    let cipher = PanCipher::load_or_create(&key.resolved).map_err(|e| match e {
        crate::store::StoreError::BadKey(_) => said(format!(
            "{e}: it holds {} bytes; a key written as hex or base64 text is not one: 32 raw bytes, as `head -c 32 /dev/urandom` makes",
            std::fs::metadata(&key.resolved).map_or(0, |m| m.len())
        )),
        e => said(e.to_string()),
    })?;
    if old_key.exists() {
        let old = PanCipher::load_or_create(old_key).map_err(|e| e.to_string())?;
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

/// Copies [`CARRIED_FILES`] from `from` into `work` where they are, modes kept, synced.
fn carry_files(from: &Path, work: &Path) -> Result<(), String> {
    for name in CARRIED_FILES {
        let source = from.join(name);
        if !source.exists() {
            continue;
        }
        let target = work.join(name);
        std::fs::copy(&source, &target)
            .and_then(|_| std::fs::File::open(&target)?.sync_all())
            .map_err(|e| format!("copying {} into {}: {e}", source.display(), work.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cards::{CardsConfig, Decision};

    /// Cards in `dir` (made there) with one card issued, capped at `cap`.
    fn one_card(dir: &Path, cap: u64) -> (Cards, crate::cards::CardKey) {
        let store = StoreConfig {
            data_dir: dir.to_path_buf(),
            ..Default::default()
        };
        let (cards, _) =
            Cards::open(&CardsConfig::default(), &store, LedgerConfig::default()).expect("open");
        let now = crate::cards::card::unix_now();
        let real = crate::pan::Pan::from_digits_checked(
            crate::cards::vpan::random_luhn("497010", 16).as_bytes(),
        )
        .expect("a test card");
        let spec = crate::cards::card::test_spec(real, cap, now + 86_400);
        let (view, durable) = cards.issue(&spec, now).expect("issued");
        durable.wait().expect("durable");
        (cards, crate::cards::CardKey::of(&view.vpan))
    }

    /// The check before the rename: a copy that is not what it was made from is refused,
    /// whichever part differs, and only a copy that is passes.
    #[test]
    fn a_copy_is_refused_unless_it_reads_back_as_what_it_was_made_from() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (made_from, other) = (dir.path().join("a"), dir.path().join("b"));
        let (cards, card) = one_card(&made_from, 1_000);
        let work = dir.path().join("copy.rekeying");
        create_private_dir(&work).expect("work");
        let key = work.join("pan.key");
        let cipher = PanCipher::load_or_create(&key).expect("key");
        cards.copy_rekeyed(&work, &cipher).expect("copied");
        let debt = Debt {
            id: 7,
            reversal: bytes::Bytes::from_static(b"0400 a reversal"),
        };
        OwedReversals::write_copy(&work, &cipher, std::slice::from_ref(&debt), &[], 5)
            .expect("book");
        let config = Config::default();
        let ledger = LedgerConfig::default();
        let check = |cards: &Cards, debts: Vec<Debt>| {
            read_back(&config, ledger, &work, &key, cards, debts, &[], 5)
        };

        let (another, _) = one_card(&other, 1_000);
        let said = check(&another, vec![debt.clone()]).expect_err("other cards");
        assert!(
            said.contains("does not read back the same") && said.contains("differs"),
            "{said}"
        );
        assert!(said.contains("left there, not renamed"), "{said}");
        let said = check(&cards, vec![]).expect_err("other debts");
        assert!(said.contains("1 reversals owed"), "{said}");
        let stamp = Stamp {
            key: b"a transaction".to_vec(),
            stamp: *b"000042",
            at: 5,
        };
        let said = read_back(
            &config,
            ledger,
            &work,
            &key,
            &cards,
            vec![debt.clone()],
            &[stamp],
            5,
        )
        .expect_err("other STANs");
        assert!(
            said.contains("0 changed STANs read back, of 1 and 1"),
            "{said}"
        );
        check(&cards, vec![debt.clone()]).expect("the same");
        // An approval made after the copy: its card's hold, and its transaction.
        let Decision::Approve(_) = cards.authorize(
            card,
            &crate::cards::request::test_purchase(1, 1),
            crate::cards::card::unix_now(),
        ) else {
            panic!("approved");
        };
        let said = check(&cards, vec![debt]).expect_err("another approval");
        assert!(said.contains("differs"), "{said}");
    }
}
