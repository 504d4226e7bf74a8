//! `vpan rekey`: the data directory copied under a new PAN key, for a key's change at the
//! end of its cryptoperiod or on suspicion that it leaked.
//!
//! The copy is a new data directory, not the old one rewritten in place: the old key keeps
//! opening the old directory, so a rekey that fails, or a copy the operators do not trust,
//! costs nothing but its directory.
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
//! synced, opened under the new key as the next start will open it, and compared card by
//! card and transaction by transaction with what it was made from. Only then is the old
//! directory marked copied (a start there is refused from then on: it would approve what
//! the copy never counts) and the copy renamed into place, so the name asked for holds a
//! whole, checked copy or nothing.

use std::path::{Path, PathBuf};

use crate::cards::{Cards, LedgerConfig};
use crate::config::Config;
use crate::store::crypto::PanCipher;
use crate::store::journal::sync_dir;
use crate::store::owed::{self, Debt, OwedReversals, Stamp};
use crate::store::{OWN_KEY_FILE, REKEYED_FILE, StoreConfig, create_private_dir, naming_the_key};
use crate::switch::issuer::RESTAMPED_KEPT;

mod checks;

use checks::{
    check_from, check_into, check_leftovers, check_new_key, check_not_running, check_target,
    load_new_key, running,
};

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
const CARRIED_FILES: [&str; 3] = [
    crate::api::auth::TOKEN_FILE,
    crate::api::tls::CERT_FILE,
    crate::api::tls::KEY_FILE,
];

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
        // The new directory's own pan.key: `store.key_file` empty.
        let key_file = if self.key.starts_with(&self.into) {
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
    crate::store::crypto::no_core_dumps()?;
    let env = crate::config::vpan_env_vars().map_err(|e| e.to_string())?;
    let config = Config::load(args.config.as_deref(), env).map_err(|e| e.to_string())?;
    let done = rekey(&config, &args.into, args.new_key_file.as_deref())?;
    println!("{done}");
    Ok(())
}

/// Copies the data directory `config` names into `into` under the key in `new_key` (made
/// as `into`'s `pan.key` when `None`), checks the copy reads back the same, marks the old
/// directory copied, and puts the copy in place.
pub fn rekey(config: &Config, into: &Path, new_key: Option<&Path>) -> Result<Rekeyed, String> {
    rekey_stepping(config, into, new_key, &mut |_| {})
}

/// The steps of a rekey after which it may be stopped, for the test that crashes it at
/// each ([`rekey_stepping`]) and follows what the next run says.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The old directory opened (holds in doubt counted, a torn tail cut).
    Opened,
    /// The copy's directory made, its key with it when vpan makes one.
    Begun,
    /// Everything written into the copy, synced.
    Written,
    /// The copy read back and found the same.
    Checked,
    /// The old directory marked copied.
    Marked,
    /// The copy renamed into place.
    Renamed,
}

/// [`rekey`], calling `at` after each [`Step`].
#[doc(hidden)]
pub fn rekey_stepping(
    config: &Config,
    into: &Path,
    new_key: Option<&Path>,
    at: &mut dyn FnMut(Step),
) -> Result<Rekeyed, String> {
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
    // The new key read, and told from the old, before the store is opened: a rekey refused
    // for its key leaves the old directory as it found it.
    let old_key = store.key_path();
    let given = match new_key {
        Some(key) => {
            let cipher = load_new_key(&key, &old_key)?;
            Some((key, cipher))
        }
        None => None,
    };

    let old = Old::open(config, &from)?;
    at(Step::Opened);
    create_private_dir(&work).map_err(|e| format!("making {}: {e}", work.display()))?;
    let (key_path, given_key, new_cipher) = match given {
        Some((key, cipher)) => (key.resolved, Some(key.given), cipher),
        None => {
            let made = work.join(OWN_KEY_FILE);
            let cipher = PanCipher::load_or_create(&made).map_err(|e| e.to_string())?;
            (made, None, cipher)
        }
    };
    at(Step::Begun);
    let (cards, transactions) = old.write_copy(&work, &new_cipher)?;
    at(Step::Written);
    // The key as the next start reads it, from its file.
    read_back(config, &old, &work, &key_path)?;
    at(Step::Checked);
    put_in_place(&from, &into, &work, at)?;
    Ok(Rekeyed {
        key: given_key.unwrap_or_else(|| into.join(OWN_KEY_FILE)),
        from_key: std::path::absolute(&old_key).unwrap_or(old_key),
        old_key_in_old_dir: old.key_in_dir,
        from,
        into,
        cards,
        transactions,
        reversals_owed: old.debts.len(),
        holds_counted_as_spent: old.recovered.holds_counted_as_spent,
        bytes_cut: old.recovered.bytes_cut,
    })
}

/// The old data directory, opened.
struct Old {
    /// Where it is, resolved.
    dir: PathBuf,
    /// Its cards and transactions.
    cards: Cards,
    /// What opening it found.
    recovered: crate::cards::Recovered,
    /// Whether its key is in it (`pan.key`), and goes with it.
    key_in_dir: bool,
    /// The reversals it owes the issuer.
    debts: Vec<Debt>,
    /// The STANs it changed toward the issuer, within the hour they are kept.
    stamps: Vec<Stamp>,
    /// When it was opened, Unix seconds (the book's clock).
    now: u64,
}

impl Old {
    /// Opens the store `config` names, `from`, as a start does: holds the issuer never
    /// answered are counted in doubt (and journaled so), the damaged tail a crash left is
    /// cut; its lock keeps a switch from starting on it meanwhile. Every transaction it
    /// remembers is kept, however old and however many, in every queue: the switch on the
    /// copy forgets by its own settings at its start, as it would here, and a rekey run
    /// with tighter `cards.ledger_*` settings than the switch's (another file, a VPAN_
    /// variable left out) must not forget for it. The table grows with what is read, not
    /// sized ahead.
    fn open(config: &Config, from: &Path) -> Result<Old, String> {
        let store = &config.store;
        let (cards, recovered) = Cards::open(&config.cards, store, LedgerConfig::unbounded())
            .map_err(|e| match e {
                // Started since `check_not_running` looked.
                crate::cards::OpenError::Store(crate::store::StoreError::Locked) => running(from),
                e => format!("opening {}: {e}", from.display()),
            })?;
        let key = store.key_path();
        // Resolved as `from` is: the report must not name a path the copy may be moved to.
        let key_in_dir = store.makes_its_own_key()
            || std::fs::canonicalize(&key).is_ok_and(|key| key.starts_with(from));
        let cipher = PanCipher::load(&key).map_err(|e| e.to_string())?;
        let now = crate::cards::card::unix_now();
        // As a start does: a debt an older vpan wrote with card-verification data loses it,
        // so that the copy does not take it on under the new key.
        let issuer_spec = crate::iso8583::Spec::by_name(&config.issuer.spec)
            .map_err(|e| format!("issuer.spec: {e}"))?;
        let (_book, debts, stamps) =
            OwedReversals::open_restating(from, cipher, now, RESTAMPED_KEPT.as_secs(), |r| {
                crate::switch::issuer::kept_as_owed(issuer_spec, r)
            })
            .map_err(naming_the_key(&key, &from.join(owed::FILE)))
            .map_err(|e| format!("opening the reversals owed in {}: {e}", from.display()))?;
        Ok(Old {
            dir: from.to_path_buf(),
            cards,
            recovered,
            key_in_dir,
            debts,
            stamps,
            now,
        })
    }

    /// Writes everything it holds into `work` under `cipher`, synced: the cards and
    /// transactions, the book of reversals owed, and [`CARRIED_FILES`]. Returns the cards
    /// and transactions written.
    fn write_copy(&self, work: &Path, cipher: &PanCipher) -> Result<(u64, u64), String> {
        let written = |what: &'static str| {
            move |e: crate::store::StoreError| {
                format!("writing {what} into {}: {e}", work.display())
            }
        };
        let counts = self
            .cards
            .copy_rekeyed(work, cipher)
            .map_err(written("the cards"))?;
        OwedReversals::write_copy(work, cipher, &self.debts, &self.stamps, self.now)
            .map_err(written("the reversals owed"))?;
        carry_files(&self.dir, work)?;
        sync_dir(work).map_err(|e| format!("syncing {}: {e}", work.display()))?;
        Ok(counts)
    }
}

/// Opens the copy in `work` under the key in `key_path`, as the next start will, and
/// compares it with `old`, what it was made from: card by card, transaction by
/// transaction, debt by debt and STAN by STAN.
fn read_back(config: &Config, old: &Old, work: &Path, key_path: &Path) -> Result<(), String> {
    let not_the_same = |what: String| {
        format!(
            "the copy in {} does not read back the same ({what}): it is left there, not renamed; delete it",
            work.display()
        )
    };
    let (copy, _) = open_copy(config, work, key_path).map_err(|e| not_the_same(e.to_string()))?;
    if let Some(difference) = old.cards.first_difference(&copy) {
        return Err(not_the_same(difference));
    }
    drop(copy);
    let cipher = PanCipher::load(key_path).map_err(|e| e.to_string())?;
    let (_book, mut debts_back, stamps_back) =
        OwedReversals::open(work, cipher, old.now, RESTAMPED_KEPT.as_secs())
            .map_err(naming_the_key(key_path, &work.join(owed::FILE)))
            .map_err(|e| not_the_same(e.to_string()))?;
    // Read in the order they were written, which two tasks make; copied by number.
    let mut debts = old.debts.clone();
    debts.sort_by_key(|d| d.id);
    debts_back.sort_by_key(|d| d.id);
    if debts_back != debts || stamps_back != old.stamps {
        return Err(not_the_same(format!(
            "{} reversals owed and {} changed STANs read back, of {} and {}",
            debts_back.len(),
            stamps_back.len(),
            debts.len(),
            old.stamps.len()
        )));
    }
    Ok(())
}

/// Opens the copy in `work` under the key in `key`, as the next start will, with nothing
/// forgotten (see [`Old::open`]).
fn open_copy(
    config: &Config,
    work: &Path,
    key: &Path,
) -> Result<(Cards, crate::cards::Recovered), crate::cards::OpenError> {
    let store = StoreConfig {
        data_dir: work.to_path_buf(),
        key_file: key.to_path_buf(),
        ..config.store.clone()
    };
    Cards::open(&config.cards, &store, LedgerConfig::unbounded())
}

/// Marks `from` copied, then renames the checked copy `work` to `into`: no moment has a
/// copy standing and the old directory still startable. A rename that fails takes the
/// mark back, as no copy stands.
fn put_in_place(
    from: &Path,
    into: &Path,
    work: &Path,
    at: &mut dyn FnMut(Step),
) -> Result<(), String> {
    // From now on the switch belongs on the copy: one started on `from` by mistake (or by
    // a supervisor) would approve what the copy never counts.
    mark_copied(from, into, work)?;
    at(Step::Marked);
    if let Err(e) = std::fs::rename(work, into) {
        let unmarked = std::fs::remove_file(from.join(REKEYED_FILE)).and_then(|()| sync_dir(from));
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
    at(Step::Renamed);
    Ok(())
}

/// Leaves [`REKEYED_FILE`] in `from`, naming `into`, synced: a start there is refused. On
/// failure none is left, and the copy in `work` is not to be renamed.
fn mark_copied(from: &Path, into: &Path, work: &Path) -> Result<(), String> {
    let marker = from.join(REKEYED_FILE);
    crate::store::mark_rekeyed(from, into).map_err(|e| {
        // One that failed after its rename (the directory's sync) is in place: taken back.
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
        let debt = Debt {
            id: 7,
            reversal: bytes::Bytes::from_static(b"0400 a reversal"),
        };
        let mut old = Old {
            dir: made_from,
            cards,
            recovered: Default::default(),
            key_in_dir: true,
            debts: vec![debt],
            stamps: vec![],
            now: 5,
        };
        old.write_copy(&work, &cipher).expect("copied");
        let config = Config::default();
        read_back(&config, &old, &work, &key).expect("the same");

        // Each part that differs from what the copy was made from is found.
        let (another, _) = one_card(&other, 1_000);
        let cards = std::mem::replace(&mut old.cards, another);
        let said = read_back(&config, &old, &work, &key).expect_err("other cards");
        assert!(
            said.contains("does not read back the same") && said.contains("differs"),
            "{said}"
        );
        assert!(said.contains("left there, not renamed"), "{said}");
        old.cards = cards;
        let debts = std::mem::take(&mut old.debts);
        let said = read_back(&config, &old, &work, &key).expect_err("other debts");
        assert!(said.contains("1 reversals owed"), "{said}");
        old.debts = debts;
        old.stamps.push(Stamp {
            key: b"a transaction".to_vec(),
            stamp: *b"000042",
            at: 5,
        });
        let said = read_back(&config, &old, &work, &key).expect_err("other STANs");
        assert!(
            said.contains("0 changed STANs read back, of 1 and 1"),
            "{said}"
        );
        old.stamps.clear();
        // An approval made after the copy: its card's hold, and its transaction.
        let Decision::Approve(_) = old.cards.authorize(
            card,
            &crate::cards::request::test_purchase(1, 1),
            crate::cards::card::unix_now(),
        ) else {
            panic!("approved");
        };
        let said = read_back(&config, &old, &work, &key).expect_err("another approval");
        assert!(said.contains("differs"), "{said}");
    }
}
