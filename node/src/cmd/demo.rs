//! `popmesh demo`: one site, two devices, apart and together again, in one process.
//!
//! The story: a kiosk creates the site (it holds the authority key), opens a slot of ten seats split five and five,
//! and invites a POS terminal with a join token. The terminal enrolls itself from the token and catches up. Then
//! the network is cut: each device sells seats and takes a payment alone, the terminal retries one payment, and the
//! kiosk tries to sell beyond its quota. The network heals, the replicas sync over the Automerge sync protocol, and
//! both devices verify every receipt against the merged site directory.
//!
//! Everything here is the real domain core; only the network is missing (two replicas in one process). The whole
//! site over real processes is `popmesh run`'s job.

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::{Context as _, Result, ensure};
use popmesh_crdt::directory::{Directory, ShowRecord, SlotRecord};
use popmesh_crdt::enrollment::{InviteTerms, JoinToken, SiteAuthority};
use popmesh_crdt::escrow::{EscrowError, Slot};
use popmesh_crdt::ledger::Ledger;
use popmesh_crdt::receipt::{PaymentRequest, Receipt};
use popmesh_crdt::risk::RiskLimits;
use popmesh_crdt::{DeviceId, DeviceKey, Doc, Role, SecretKey, SyncStats, UnixMillis, actor_id};

const SHOW: &str = "show-1";
const SLOT: &str = "slot-1900";
const HOUR: u64 = 3_600_000;

/// Where the demo's keys and clock come from.
#[derive(Debug, Clone, Copy)]
pub enum Entropy {
    /// A fixed seed and a fixed clock: the same output every run.
    Seeded(u64),
    /// OS randomness and the system clock.
    Os,
}

impl Entropy {
    fn seed(self, label: &str) -> Result<[u8; 32]> {
        match self {
            Entropy::Seeded(seed) => {
                // Seeded runs are demos, not secrets: derive every key from the seed and a label.
                let mut input = seed.to_be_bytes().to_vec();
                input.extend_from_slice(label.as_bytes());
                Ok(blake3::derive_key("popmesh demo key v1", &input))
            }
            Entropy::Os => {
                let mut out = [0u8; 32];
                getrandom::fill(&mut out).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
                Ok(out)
            }
        }
    }

    fn start(self) -> UnixMillis {
        match self {
            // 2026-11-28 18:00 UTC.
            Entropy::Seeded(_) => UnixMillis(1_795_888_800_000),
            Entropy::Os => popmesh_node::clock::now(),
        }
    }
}

/// One device's replicas of the site's documents.
struct Device {
    name: &'static str,
    key: DeviceKey,
    directory: Doc<Directory>,
    slot: Doc<Slot>,
    ledgers: BTreeMap<DeviceId, Doc<Ledger>>,
}

impl Device {
    fn id(&self) -> DeviceId {
        self.key.public()
    }
}

/// What the demo found, for tests and for the closing lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoOutcome {
    pub receipts_verified: usize,
    pub receipts_total: usize,
    pub seats_sold: u64,
    pub capacity: u64,
    pub replicas_identical: bool,
}

fn money(minor: u64, currency: &str) -> String {
    format!("{currency} {}.{:02}", minor / 100, minor % 100)
}

/// Syncs every document two devices share, and hands over ledgers the other lacks.
fn heal(a: &mut Device, b: &mut Device) -> Result<SyncStats> {
    let mut stats = a.directory.sync_with(&mut b.directory)?;
    stats += a.slot.sync_with(&mut b.slot)?;
    let owners: Vec<DeviceId> = a.ledgers.keys().chain(b.ledgers.keys()).copied().collect();
    for owner in owners {
        match (a.ledgers.get_mut(&owner), b.ledgers.get_mut(&owner)) {
            (Some(x), Some(y)) => stats += x.sync_with(y)?,
            (Some(x), None) => {
                let (copy, s) = Doc::replicate_from(x, actor_id(b.id(), 0))?;
                b.ledgers.insert(owner, copy);
                stats += s;
            }
            (None, Some(y)) => {
                let (copy, s) = Doc::replicate_from(y, actor_id(a.id(), 0))?;
                a.ledgers.insert(owner, copy);
                stats += s;
            }
            (None, None) => {}
        }
    }
    Ok(stats)
}

pub fn run(entropy: Entropy, out: &mut impl Write) -> Result<DemoOutcome> {
    let t0 = entropy.start();
    let limits = RiskLimits::default();
    writeln!(
        out,
        "popmesh demo: one site, two devices, apart and together again\n"
    )?;

    // The kiosk runs `site init`: it holds the authority key and creates the site's documents.
    let authority = SiteAuthority::new(SecretKey::from_seed(entropy.seed("authority")?));
    let kiosk_key = SecretKey::from_seed(entropy.seed("kiosk-1")?);
    let mut directory = Doc::<Directory>::create_site(
        actor_id(kiosk_key.public(), 0),
        authority.public(),
        "Harbour Market",
    )?;
    directory.add_device(&authority.enroll(
        kiosk_key.public(),
        Role::Kiosk,
        "kiosk-1",
        t0,
        t0.saturating_add_ms(48 * HOUR),
    ))?;
    directory.add_show(
        SHOW,
        &ShowRecord {
            name: "Friday Night Market".into(),
            currency: "EUR".into(),
            slots: BTreeMap::new(),
        },
    )?;
    directory.add_slot(
        SHOW,
        SLOT,
        &SlotRecord {
            label: "19:00".into(),
            starts_at: t0.saturating_add_ms(HOUR).0,
            capacity: 10,
        },
    )?;
    writeln!(
        out,
        "site \"Harbour Market\" {}  authority {}",
        authority.site(),
        authority.public().short()
    )?;
    writeln!(
        out,
        "  {SHOW} \"Friday Night Market\", slot 19:00 with 10 seats"
    )?;
    writeln!(
        out,
        "kiosk-1 ({}) enrolled by the site authority",
        kiosk_key.public().short()
    )?;

    // The kiosk issues a join token for one POS terminal.
    let (invite, invite_key) = authority.invite(
        entropy.seed("invite-1")?,
        InviteTerms {
            role: Role::Pos,
            expires_at: t0.saturating_add_ms(HOUR),
            max_uses: 1,
            cert_valid_until: t0.saturating_add_ms(48 * HOUR),
        },
    );
    let line = JoinToken {
        site_name: "Harbour Market".into(),
        authority: authority.public(),
        invite,
        invite_secret: invite_key.seed(),
        network_key: entropy.seed("network-key")?,
        bootstrap: vec!["/ip4/127.0.0.1/tcp/4701".into()],
    }
    .to_line();
    writeln!(
        out,
        "kiosk-1 issues a join token for one POS: {}... ({} characters)",
        &line[..24],
        line.len()
    )?;

    // The terminal parses the token, enrolls itself offline, and catches up from the kiosk.
    let pos_key = SecretKey::from_seed(entropy.seed("pos-1")?);
    let token = JoinToken::from_line(&line).context("the token the kiosk just printed parses")?;
    let cert = token.enroll(pos_key.public(), "pos-1", t0.saturating_add_ms(60_000))?;
    let (mut pos_directory, mut caught_up) =
        Doc::replicate_from(&mut directory, actor_id(pos_key.public(), 0))?;
    pos_directory.add_device(&cert)?;

    let grants = BTreeMap::from([(kiosk_key.public(), 5), (pos_key.public(), 5)]);
    let mut slot =
        Doc::<Slot>::create_slot(actor_id(kiosk_key.public(), 0), SHOW, SLOT, 10, &grants)?;
    let (pos_slot, s) = Doc::replicate_from(&mut slot, actor_id(pos_key.public(), 0))?;
    caught_up += s;
    let site = authority.site();
    let mut kiosk = Device {
        name: "kiosk-1",
        directory,
        slot,
        ledgers: BTreeMap::from([(
            kiosk_key.public(),
            Doc::create_ledger(
                actor_id(kiosk_key.public(), 0),
                site,
                SHOW,
                kiosk_key.public(),
            )?,
        )]),
        key: kiosk_key,
    };
    let mut pos = Device {
        name: "pos-1",
        directory: pos_directory,
        slot: pos_slot,
        ledgers: BTreeMap::from([(
            pos_key.public(),
            Doc::create_ledger(actor_id(pos_key.public(), 0), site, SHOW, pos_key.public())?,
        )]),
        key: pos_key,
    };
    writeln!(
        out,
        "pos-1 ({}) enrolls itself from the token and catches up: {} sync messages, {} bytes",
        pos.id().short(),
        caught_up.messages,
        caught_up.bytes
    )?;
    writeln!(
        out,
        "  the slot's 10 seats are escrowed: 5 to kiosk-1, 5 to pos-1\n"
    )?;

    writeln!(out, "-- the network is cut: each device works alone --")?;
    let mut clock = t0.saturating_add_ms(5 * 60_000);
    for (device, booking, seats, order, amount) in [
        (&mut kiosk, "k1-0001", 2, "order-1001", 1250),
        (&mut pos, "p1-0001", 3, "order-2001", 800),
    ] {
        clock = clock.saturating_add_ms(30_000);
        let id = device.id();
        device.slot.sell(id, booking, seats, clock)?;
        let left = device.slot.view()?.available(&id.to_hex());
        writeln!(
            out,
            "{} sells {seats} seats (booking {booking}); {left} left in its quota",
            device.name
        )?;
        let request = PaymentRequest {
            idempotency_key: order.into(),
            amount_minor: amount,
            currency: "EUR".into(),
            attendee: None,
        };
        let ledger = device.ledgers.get_mut(&id).context("own ledger")?;
        let taken = ledger.take_payment(&device.key, &limits, &request, 0, clock)?;
        writeln!(
            out,
            "{} takes {} for {order}: receipt {}",
            device.name,
            money(amount, "EUR"),
            taken.receipt.token
        )?;
    }
    // The terminal's app times out and retries; the same receipt comes back and nothing is charged twice.
    let retry = PaymentRequest {
        idempotency_key: "order-2001".into(),
        amount_minor: 800,
        currency: "EUR".into(),
        attendee: None,
    };
    let pos_id = pos.id();
    let replay = pos
        .ledgers
        .get_mut(&pos_id)
        .context("own ledger")?
        .take_payment(&pos.key, &limits, &retry, 0, clock)?;
    ensure!(replay.replayed, "a retried payment must replay");
    writeln!(
        out,
        "pos-1 retries order-2001: same receipt {}, charged once",
        replay.receipt.token
    )?;
    let kiosk_id = kiosk.id();
    match kiosk.slot.sell(kiosk_id, "k1-0002", 4, clock) {
        Err(EscrowError::QuotaSpent {
            available,
            requested,
        }) => {
            writeln!(
                out,
                "kiosk-1 tries to sell {requested} more: refused, only {available} left in its quota"
            )?;
        }
        other => anyhow::bail!("selling past the quota must be refused, got {other:?}"),
    }

    let healed = heal(&mut kiosk, &mut pos)?;
    writeln!(
        out,
        "\n-- the network heals: {} sync messages, {} bytes --",
        healed.messages, healed.bytes
    )?;

    let mut identical =
        kiosk.directory.heads() == pos.directory.heads() && kiosk.slot.heads() == pos.slot.heads();
    for (owner, ledger) in kiosk.ledgers.iter_mut() {
        let theirs = pos.ledgers.get_mut(owner).context("ledger replicated")?;
        identical &= ledger.heads() == theirs.heads();
    }
    writeln!(
        out,
        "both devices hold identical documents: {}",
        if identical { "yes" } else { "NO" }
    )?;

    let slot = kiosk.slot.view()?;
    slot.check_invariant()?;
    writeln!(
        out,
        "slot 19:00: {} of {} seats sold (kiosk-1 {}, pos-1 {}), {} left",
        slot.total_sold(),
        slot.record.capacity,
        slot.sold(&kiosk_id.to_hex()),
        slot.sold(&pos_id.to_hex()),
        slot.remaining()
    )?;

    writeln!(
        out,
        "receipts, verified by each device against the merged site directory:"
    )?;
    let mut verified = 0;
    let mut total = 0;
    let mut unreconciled = 0;
    for device in [&kiosk, &pos] {
        let directory = device.directory.view()?;
        for ledger in device.ledgers.values() {
            let view = ledger.view()?;
            if device.name == "kiosk-1" {
                unreconciled += view.unreconciled_minor();
            }
            for receipt in &view.receipts {
                total += 1;
                let name = directory
                    .verify_device(&receipt.device, receipt.issued_at)
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                let verdict = receipt.verify(&directory);
                if verdict.is_ok() {
                    verified += 1;
                }
                if device.name == "kiosk-1" {
                    print_receipt(out, receipt, &name, &verdict)?;
                }
            }
        }
    }
    writeln!(
        out,
        "{verified} of {total} receipt checks passed on 2 devices; {} unreconciled across the site",
        money(unreconciled, "EUR")
    )?;
    Ok(DemoOutcome {
        receipts_verified: verified,
        receipts_total: total,
        seats_sold: slot.total_sold(),
        capacity: slot.record.capacity,
        replicas_identical: identical,
    })
}

fn print_receipt(
    out: &mut impl Write,
    receipt: &Receipt,
    name: &str,
    verdict: &Result<(), popmesh_crdt::receipt::ReceiptError>,
) -> Result<()> {
    let status = match verdict {
        Ok(()) => "verified".to_owned(),
        Err(err) => format!("REJECTED: {err}"),
    };
    writeln!(
        out,
        "  {}  {:<8} {:>10}  {:<11} {status}",
        receipt.token,
        name,
        money(receipt.amount_minor, &receipt.currency),
        receipt.idempotency_key
    )?;
    Ok(())
}
