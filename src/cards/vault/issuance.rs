//! Issuance and the holder's status: a card drawn, checked and made durable before its
//! number is given out; paused, resumed and closed; and the card as the API shows it,
//! with the real PAN masked.

use super::Cards;
use crate::cards::card::{
    AcceptorId, Card, CardKey, CardSpec, Controls, Expiry, LockKind, Status, UnixSeconds,
    civil_from_days,
};
use crate::cards::event::{self, Event, Issued};
use crate::cards::history::RecentTx;
use crate::cards::requests::{Earlier, IssuanceRequests, RequestKey};
use crate::cards::vpan::GenerateError;
use crate::pan::{Pan, luhn_valid};
use crate::store::StoreError;
use crate::store::crypto;
use crate::store::journal::Durable;

/// Why an issuance was refused (the API's 422 and 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    /// A field is invalid; the message names it.
    #[error("{0}")]
    Invalid(&'static str),
    /// No vPAN is left in the card's range.
    #[error(transparent)]
    Generate(#[from] GenerateError),
    /// The issuance could not be made durable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The idempotency key is taken: by a request drawing its card at this moment, or
    /// by a card issued under it.
    #[error("the idempotency key is in use")]
    KeyTaken(Earlier),
    /// The idempotency key issued a card for a different request.
    #[error("the idempotency key was used for a different request")]
    KeyReused,
}

/// Why a status change was refused (the API's 404, 409 and 503).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CardError {
    /// No such vPAN.
    #[error("no such card")]
    NotFound,
    /// A closed card cannot be paused or resumed.
    #[error("the card is closed")]
    Closed,
    /// The change could not be made durable.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A card as the API shows it: never the real PAN, only its masked form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardView {
    /// The vPAN (the cardholder's number; `Display` masks it, `expose()` for the API).
    pub vpan: Pan,
    /// The real PAN, masked (first 6, last 4; fewer of the last on a short card).
    pub real_pan_masked: String,
    /// The virtual expiry, YYMM (the month of `valid_until`).
    pub expiry: Expiry,
    /// Effective status.
    pub status: Status,
    /// The controls as issued (a first-use lock stays `FirstUse` once bound).
    pub controls: Controls,
    /// The merchant (DE 42) a first-use lock bound the card to, once it has.
    pub merchant_bound: Option<AcceptorId>,
    /// Spent, minor units.
    pub spent: u64,
    /// Held by approvals waiting for the issuer.
    pub held: u64,
    /// Still available under the cap: 0 once the card is closed.
    pub available: u64,
    /// Uses counted.
    pub uses: u32,
    /// When issued.
    pub created_at: UnixSeconds,
}

/// A pause, resume or close: the card after it, and whether it changed anything (a second
/// pause of a paused card does not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusChange {
    /// The card after the change.
    pub card: CardView,
    /// False when the card had that status already.
    pub changed: bool,
}

impl CardView {
    fn of(key: CardKey, c: &Card) -> CardView {
        CardView {
            vpan: key.pan(),
            real_pan_masked: c.real_pan.masked_beside_its_vpan(),
            expiry: c.virtual_expiry(),
            status: c.status(),
            controls: c.controls(),
            merchant_bound: matches!(c.lock, LockKind::FirstUseBound | LockKind::FirstUseHeld)
                .then_some(c.acceptor),
            spent: c.spent,
            held: c.held,
            available: c.available(),
            uses: c.uses,
            created_at: c.created_at,
        }
    }
}

impl Cards {
    /// Issues a card: draws its vPAN, puts it in the index and queues the journal record.
    /// Acknowledge only after the returned future resolves (see [`Cards::issue_durable`]).
    pub fn issue(
        &self,
        spec: &CardSpec,
        now: UnixSeconds,
    ) -> Result<(CardView, Durable), IssueError> {
        self.issue_under(spec, now, None)
    }

    /// [`Cards::issue`], under the digest of a client's idempotency key when there is
    /// one: the key is claimed before the draw and names the card from the draw on (its
    /// record carries it), or it is given back; taken already, it is
    /// [`IssueError::KeyTaken`], and nothing is drawn.
    fn issue_under(
        &self,
        spec: &CardSpec,
        now: UnixSeconds,
        request: Option<RequestKey>,
    ) -> Result<(CardView, Durable), IssueError> {
        validate(spec, now)?;
        self.generator
            .check_real(&spec.pan)
            .map_err(IssueError::Invalid)?;
        // A vPAN behind a vPAN would reach the issuer with a number it does not know, past
        // the first card's controls.
        let refused = || {
            Err(IssueError::Invalid(
                "pan: is a virtual card number: give the real card's",
            ))
        };
        if self.generator.in_virtual_range(spec.pan.as_bytes()) {
            return refused();
        }
        // Given back on every way out but a drawn card (when dropped unsettled).
        let claim = match request {
            Some(key) => Some(Claim::take(&self.requests, key, now)?),
            None => None,
        };
        // Known as a real card before it is looked up among the vPANs: a draw for another
        // card from then on cannot take this number (only one already made, in the same
        // microseconds, of this very number out of 10^9, could).
        let real_key = CardKey::of(&spec.pan);
        let newly_known = self.real_keys.insert(real_key, ()).is_none();
        if self.index.contains(real_key) {
            // It is a vPAN, for every call that gives it, now and later: no real card
            // draws must avoid. Kept, each such call would grow the set for good (review
            // of a07ad5e).
            if newly_known {
                self.real_keys.remove(&real_key);
            }
            return refused();
        }
        let lsn = self.lsn();
        let mut card = Card::new(spec, now);
        card.lsn = lsn;
        card.request_key = request.map(Box::new);
        let mut durable = None;
        let drawn = self.generator.generate(&spec.pan, |candidate| {
            let key = CardKey::of(candidate);
            !self.real_keys.contains_key(&key)
                && self.index.insert_new(key, || {
                    // Queued as the number is claimed, under its shard's lock, before the card
                    // can be seen: a snapshot that sees it waits for its record (as for every
                    // other change), and none holds a card whose issuance was never durable.
                    let sealed_pan = self.cipher.seal(&spec.pan, &key.raw().to_le_bytes());
                    card.pan_nonce = crypto::nonce_of(&sealed_pan);
                    durable = Some(self.journal.append(Event::Issued(Box::new(Issued {
                        lsn,
                        key,
                        sealed_pan,
                        real_expiry: spec.pan_expiry,
                        controls: card.controls(),
                        created_at: now,
                        request_key: request,
                    }))));
                    card.clone()
                })
        });
        let vpan = match drawn {
            Ok(vpan) => vpan,
            Err(e) => {
                // A card that could not be issued leaves nothing draws must avoid, unless
                // they are drawn among real cards (no ranges) and its BIN is full: another
                // call may be issuing on this card meanwhile, and would lose its guard.
                // Kept otherwise, refusals (a BIN no range is for) would grow the set for
                // good (review of 15f5891).
                let in_use_elsewhere = self.generator.draws_among_real_cards()
                    && matches!(e, GenerateError::RangeFull { .. });
                if newly_known && !in_use_elsewhere {
                    self.real_keys.remove(&real_key);
                }
                return Err(e.into());
            }
        };
        let key = CardKey::of(&vpan);
        if let Some(claim) = claim {
            claim.settle(key, now);
        }
        let durable = durable.unwrap_or_else(|| Durable::ready(Err(StoreError::Failed)));
        Ok((CardView::of(key, &card), durable))
    }

    /// Issues a card and waits until it is durable. On a store error the card is removed
    /// (its number was never given out) and the error returned (the API answers 503); on a
    /// stall, which may yet end with the record on disk, it is kept.
    pub async fn issue_durable(
        &self,
        spec: &CardSpec,
        now: UnixSeconds,
    ) -> Result<CardView, IssueError> {
        self.issue_durable_under(spec, now, None).await
    }

    /// [`Cards::issue_durable`] under the digest of a client's idempotency key (see
    /// [`Cards::issued_again`] for the key's next request).
    pub async fn issue_durable_under(
        &self,
        spec: &CardSpec,
        now: UnixSeconds,
        request: Option<RequestKey>,
    ) -> Result<CardView, IssueError> {
        let (view, durable) = self.issue_under(spec, now, request)?;
        if let Err(e) = durable.await {
            // A stalled disk may still take the record: the card stays, so that its
            // number is never drawn for another card (a restart would then find two cards
            // under one number and keep the first), and the listing the caller is sent to
            // shows it, as its key does to a request sent again. A failed store takes no
            // record after the failure.
            if !matches!(e, StoreError::Stalled(_)) {
                let card = CardKey::of(&view.vpan);
                self.index.remove(card);
                if let Some(request) = &request {
                    self.requests.forget(request, card);
                }
            }
            return Err(e.into());
        }
        Ok(view)
    }

    /// What the digest of an idempotency key stands for now, if anything.
    pub fn earlier_request(&self, request: &RequestKey, now: UnixSeconds) -> Option<Earlier> {
        self.requests.earlier(request, now)
    }

    /// The card a key issued, for the key's request sent again: `spec` is that request
    /// read as of the card's creation (so a `valid_for_seconds` gives the same end), and
    /// must ask for what the card was issued with, or it is [`IssueError::KeyReused`].
    /// Answered once the card's issuance is durable, as the first answer was.
    pub async fn issued_again(
        &self,
        card: CardKey,
        spec: &CardSpec,
    ) -> Result<CardView, IssueError> {
        let same = self.index.read(card, |c| {
            c.real_pan == spec.pan
                && c.real_expiry == spec.pan_expiry
                && c.controls() == Card::new(spec, c.created_at).controls()
        });
        match same {
            // Gone since the key was looked up: its issuance failed a moment ago.
            None => return Err(IssueError::KeyTaken(Earlier::InFlight)),
            Some(false) => return Err(IssueError::KeyReused),
            Some(true) => {}
        }
        self.journal.barrier().await?;
        self.get(card)
            .ok_or(IssueError::KeyTaken(Earlier::InFlight))
    }

    /// The card as the API shows it.
    pub fn get(&self, vpan: CardKey) -> Option<CardView> {
        self.index.read(vpan, |c| CardView::of(vpan, c))
    }

    /// The card's recent decisions, newest first.
    pub fn recent(&self, vpan: CardKey) -> Option<Vec<RecentTx>> {
        self.index.read(vpan, |c| c.history.newest_first())
    }

    /// Cards by effective status, for the `vpan_cards{status}` gauge.
    pub fn counts_by_status(&self, now: UnixSeconds) -> [(&'static str, u64); 4] {
        self.index.counts_by_status(now)
    }

    /// Number of cards ever issued.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when no card was ever issued.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// A page of cards in vPAN order: up to `limit` after `after` (for `GET /v1/cards`).
    pub fn list(&self, after: Option<CardKey>, limit: usize) -> Vec<CardView> {
        self.views(self.index.page(after, limit))
    }

    /// [`Cards::list`] of the cards issued for the real card `real` (for
    /// `POST /v1/cards/search`): a walk of every card, as a page of the listing is.
    pub fn list_of_real_card(
        &self,
        real: &Pan,
        after: Option<CardKey>,
        limit: usize,
    ) -> Vec<CardView> {
        self.views(self.index.page_where(after, limit, |c| c.real_pan == *real))
    }

    fn views(&self, keys: Vec<CardKey>) -> Vec<CardView> {
        keys.into_iter().filter_map(|key| self.get(key)).collect()
    }

    /// Changes the holder's status. Pausing or resuming a closed card is refused; closing a
    /// closed card, pausing a paused one or resuming an active one changes nothing.
    pub fn set_status(
        &self,
        vpan: CardKey,
        status: Status,
    ) -> Result<(CardView, Durable), CardError> {
        self.change_status(vpan, status)
            .map(|(change, durable)| (change.card, durable))
    }

    fn change_status(
        &self,
        vpan: CardKey,
        status: Status,
    ) -> Result<(StatusChange, Durable), CardError> {
        self.index
            .update(vpan, |card| {
                let current = card.status();
                if current == Status::Closed && status != Status::Closed {
                    return Err(CardError::Closed);
                }
                if card.set_status == status {
                    // Nothing to write, but the change that set it may still be on its way
                    // to the disk: acknowledge only once it is there.
                    let card = CardView::of(vpan, card);
                    let unchanged = StatusChange {
                        card,
                        changed: false,
                    };
                    return Ok((unchanged, self.journal.barrier()));
                }
                let event = Event::Status {
                    lsn: self.lsn(),
                    key: vpan,
                    status,
                };
                let durable = self.journal.append(event.clone());
                event::apply_card(card, &event);
                let card = CardView::of(vpan, card);
                Ok((
                    StatusChange {
                        card,
                        changed: true,
                    },
                    durable,
                ))
            })
            .unwrap_or(Err(CardError::NotFound))
    }

    async fn set_status_durable(
        &self,
        vpan: CardKey,
        status: Status,
    ) -> Result<StatusChange, CardError> {
        let (change, durable) = self.change_status(vpan, status)?;
        durable.await?;
        Ok(change)
    }

    /// Pauses the card (62 until resumed), durably.
    pub async fn pause(&self, vpan: CardKey) -> Result<StatusChange, CardError> {
        self.set_status_durable(vpan, Status::Paused).await
    }

    /// Resumes a paused card, durably.
    pub async fn resume(&self, vpan: CardKey) -> Result<StatusChange, CardError> {
        self.set_status_durable(vpan, Status::Active).await
    }

    /// Closes the card for good (46), durably.
    pub async fn close(&self, vpan: CardKey) -> Result<StatusChange, CardError> {
        self.set_status_durable(vpan, Status::Closed).await
    }
}

/// An idempotency key claimed for one issuance: given back when dropped, unless the
/// issuance drew its card.
struct Claim<'a> {
    requests: &'a IssuanceRequests,
    key: RequestKey,
    settled: bool,
}

impl<'a> Claim<'a> {
    fn take(
        requests: &'a IssuanceRequests,
        key: RequestKey,
        now: UnixSeconds,
    ) -> Result<Claim<'a>, IssueError> {
        requests.claim(key, now).map_err(IssueError::KeyTaken)?;
        Ok(Claim {
            requests,
            key,
            settled: false,
        })
    }

    fn settle(mut self, card: CardKey, at: UnixSeconds) {
        self.requests.settle(self.key, card, at);
        self.settled = true;
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.requests.release(&self.key);
        }
    }
}

/// Checks an issuance request; the message names the field.
fn validate(spec: &CardSpec, now: UnixSeconds) -> Result<(), IssueError> {
    let c = &spec.controls;
    if !luhn_valid(spec.pan.as_bytes()) {
        return Err(IssueError::Invalid("pan: fails the Luhn check"));
    }
    if Expiry::parse(&spec.pan_expiry.0).is_none() {
        return Err(IssueError::Invalid("pan_expiry: must be YYMM"));
    }
    if !(1..=999).contains(&c.currency) {
        return Err(IssueError::Invalid(
            "currency: must be an ISO 4217 numeric code",
        ));
    }
    if c.amount_limit == 0 {
        return Err(IssueError::Invalid("amount_limit: must be positive"));
    }
    if c.valid_until <= now {
        return Err(IssueError::Invalid("valid_until: must be in the future"));
    }
    // The virtual card cannot outlive the real one (whose expiry bounds what the issuer
    // approves), and its YYMM cannot wrap past 2099.
    let (year, month, _) = civil_from_days((c.valid_until / 86_400) as i64);
    if (year, month) > spec.pan_expiry.year_month() {
        return Err(IssueError::Invalid(
            "valid_until: is after the real card's expiry (pan_expiry)",
        ));
    }
    if c.mcc_allow.len() > 1000 || c.mcc_block.len() > 1000 {
        return Err(IssueError::Invalid(
            "mcc_allow, mcc_block: at most 1000 codes each",
        ));
    }
    if c.mcc_allow.iter().chain(&c.mcc_block).any(|&m| m > 9999) {
        return Err(IssueError::Invalid(
            "mcc_allow, mcc_block: an MCC has four digits",
        ));
    }
    Ok(())
}
