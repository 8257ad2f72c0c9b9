//! Writing rows into PostgreSQL: one statement per table per batch (columns as arrays through `unnest`), every
//! statement `ON CONFLICT` on the table's natural key, and the documents' cursors in the same transaction.
//!
//! Facts that never change once written (bookings, transfers, check-ins, revocations, confirmations) are
//! `DO NOTHING`; facts that grow (a receipt's reconciliation mark, a counter, an incident that ends, a definition
//! that is corrected) are `DO UPDATE ... WHERE` the stored row differs, so writing the same fact twice changes no
//! row, and a stale writer never undoes a newer one (counters keep the larger value, marks and ends are kept once
//! set). Rows are sorted by key first so two origins writing the same site take row locks in the same order.

use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::WarehouseError;
use super::rows::{BatchRow, Rows};

/// A document's position: its id, name and the heads its rows came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub doc_id: String,
    pub doc_name: String,
    pub heads: Vec<String>,
}

/// Collects one column from a list of rows.
fn col<'a, R, T>(rows: &'a [R], f: impl Fn(&'a R) -> T) -> Vec<T> {
    rows.iter().map(f).collect()
}

async fn exec(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, WarehouseError> {
    Ok(tx.execute(sql, params).await?)
}

/// Writes `rows` of site `site` and `cursors` of origin `origin` in `tx` (the caller commits). Returns the rows
/// inserted or changed.
pub async fn rows(
    tx: &Transaction<'_>,
    site: &str,
    origin: &str,
    rows: &mut Rows,
    cursors: &[Cursor],
) -> Result<u64, WarehouseError> {
    rows.sort();
    let mut n = 0;
    if let Some(s) = &rows.site {
        n += exec(
            tx,
            "INSERT INTO sites (site_id, name, conversion_signals) VALUES ($1, $2, $3)
             ON CONFLICT (site_id) DO UPDATE SET name = EXCLUDED.name, conversion_signals = EXCLUDED.conversion_signals
             WHERE (sites.name, sites.conversion_signals) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.conversion_signals)",
            &[&site, &s.name, &s.conversion],
        )
        .await?;
    }
    let r = &rows.devices;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO devices (site_id, device_id, name, role)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[])
             ON CONFLICT (site_id, device_id) DO UPDATE SET name = EXCLUDED.name, role = EXCLUDED.role
             WHERE (devices.name, devices.role) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.role)",
            &[
                &site,
                &col(r, |x| x.device.as_str()),
                &col(r, |x| x.name.as_str()),
                &col(r, |x| x.role.as_str()),
            ],
        )
        .await?;
    }
    let r = &rows.shows;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO shows (site_id, show_id, name, currency)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[])
             ON CONFLICT (site_id, show_id) DO UPDATE SET name = EXCLUDED.name, currency = EXCLUDED.currency
             WHERE (shows.name, shows.currency) IS DISTINCT FROM (EXCLUDED.name, EXCLUDED.currency)",
            &[
                &site,
                &col(r, |x| x.show.as_str()),
                &col(r, |x| x.name.as_str()),
                &col(r, |x| x.currency.as_str()),
            ],
        )
        .await?;
    }
    let r = &rows.slots;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO slots (site_id, show_id, slot_id, label, starts_at_ms, capacity)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[])
             ON CONFLICT (site_id, show_id, slot_id) DO UPDATE
               SET label = EXCLUDED.label, starts_at_ms = EXCLUDED.starts_at_ms, capacity = EXCLUDED.capacity
             WHERE (slots.label, slots.starts_at_ms, slots.capacity)
               IS DISTINCT FROM (EXCLUDED.label, EXCLUDED.starts_at_ms, EXCLUDED.capacity)",
            &[
                &site,
                &col(r, |x| x.show.as_str()),
                &col(r, |x| x.slot.as_str()),
                &col(r, |x| x.label.as_str()),
                &col(r, |x| x.starts_at_ms),
                &col(r, |x| x.capacity),
            ],
        )
        .await?;
    }
    let r = &rows.grants;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO slot_grants (site_id, show_id, slot_id, device_id, seats)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[])
             ON CONFLICT (site_id, show_id, slot_id, device_id) DO NOTHING",
            &[
                &site,
                &col(r, |x| x.show.as_str()),
                &col(r, |x| x.slot.as_str()),
                &col(r, |x| x.device.as_str()),
                &col(r, |x| x.seats),
            ],
        )
        .await?;
    }
    let r = &rows.bookings;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO bookings (site_id, show_id, slot_id, device_id, booking_id, seats, at_ms, attendee)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
                                      $8::text[])
             ON CONFLICT (site_id, show_id, slot_id, device_id, booking_id) DO NOTHING",
            &[
                &site,
                &col(r, |x| x.show.as_str()),
                &col(r, |x| x.slot.as_str()),
                &col(r, |x| x.device.as_str()),
                &col(r, |x| x.booking.as_str()),
                &col(r, |x| x.seats),
                &col(r, |x| x.at_ms),
                &col(r, |x| x.attendee.as_deref()),
            ],
        )
        .await?;
    }
    let r = &rows.transfers;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO transfers (site_id, show_id, slot_id, from_device, transfer_id, to_device, seats, at_ms)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[],
                                      $8::bigint[])
             ON CONFLICT (site_id, show_id, slot_id, from_device, transfer_id) DO NOTHING",
            &[
                &site,
                &col(r, |x| x.show.as_str()),
                &col(r, |x| x.slot.as_str()),
                &col(r, |x| x.device.as_str()),
                &col(r, |x| x.transfer.as_str()),
                &col(r, |x| x.to_device.as_str()),
                &col(r, |x| x.seats),
                &col(r, |x| x.at_ms),
            ],
        )
        .await?;
    }
    let r = &rows.receipts;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO receipts (site_id, token, show_id, device_id, seq, amount_minor, currency, issued_at_ms,
                                   attendee, verified, rejection, reconciled_batch, reconciled_at_ms)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[],
                                      $8::bigint[], $9::text[], $10::bool[], $11::text[], $12::text[], $13::bigint[])
             ON CONFLICT (site_id, token) DO UPDATE
               SET verified = EXCLUDED.verified, rejection = EXCLUDED.rejection,
                   attendee = coalesce(receipts.attendee, EXCLUDED.attendee),
                   reconciled_batch = coalesce(receipts.reconciled_batch, EXCLUDED.reconciled_batch),
                   reconciled_at_ms = coalesce(receipts.reconciled_at_ms, EXCLUDED.reconciled_at_ms)
             WHERE (receipts.verified, receipts.rejection) IS DISTINCT FROM (EXCLUDED.verified, EXCLUDED.rejection)
                OR (receipts.attendee IS NULL AND EXCLUDED.attendee IS NOT NULL)
                OR (receipts.reconciled_batch IS NULL AND EXCLUDED.reconciled_batch IS NOT NULL)",
            &[
                &site,
                &col(r, |x| x.token.as_str()),
                &col(r, |x| x.show.as_str()),
                &col(r, |x| x.device.as_str()),
                &col(r, |x| x.seq),
                &col(r, |x| x.amount_minor),
                &col(r, |x| x.currency.as_str()),
                &col(r, |x| x.issued_at_ms),
                &col(r, |x| x.attendee.as_deref()),
                &col(r, |x| x.verified),
                &col(r, |x| x.rejection.as_deref()),
                &col(r, |x| x.reconciled_batch.as_deref()),
                &col(r, |x| x.reconciled_at_ms),
            ],
        )
        .await?;
    }
    let r = &rows.malformed;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO malformed_receipts (site_id, show_id, device_id, token, reason)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[])
             ON CONFLICT (site_id, show_id, device_id, token) DO NOTHING",
            &[
                &site,
                &col(r, |x| x.show.as_str()),
                &col(r, |x| x.device.as_str()),
                &col(r, |x| x.token.as_str()),
                &col(r, |x| x.reason.as_str()),
            ],
        )
        .await?;
    }
    let r = &rows.checkins;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO checkins (site_id, show_id, device_id, pass_id, at_ms, kind, subject, issuer, expires_at_ms)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::text[],
                                      $8::text[], $9::bigint[])
             ON CONFLICT (site_id, show_id, device_id, pass_id) DO NOTHING",
            &[
                &site,
                &col(r, |x| x.show.as_str()),
                &col(r, |x| x.device.as_str()),
                &col(r, |x| x.pass.as_str()),
                &col(r, |x| x.at_ms),
                &col(r, |x| x.kind.as_str()),
                &col(r, |x| x.subject.as_deref()),
                &col(r, |x| x.issuer.as_str()),
                &col(r, |x| x.expires_at_ms),
            ],
        )
        .await?;
    }
    let r = &rows.pass_revocations;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO pass_revocations (site_id, show_id, device_id, pass_id, at_ms, reason)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[])
             ON CONFLICT (site_id, show_id, device_id, pass_id) DO NOTHING",
            &[
                &site,
                &col(r, |x| x.show.as_str()),
                &col(r, |x| x.device.as_str()),
                &col(r, |x| x.pass.as_str()),
                &col(r, |x| x.at_ms),
                &col(r, |x| x.reason.as_str()),
            ],
        )
        .await?;
    }
    let r = &rows.confirmations;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO pass_confirmations (site_id, show_id, pass_id, at_ms)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::bigint[])
             ON CONFLICT (site_id, show_id, pass_id) DO NOTHING",
            &[
                &site,
                &col(r, |x| x.show.as_str()),
                &col(r, |x| x.pass.as_str()),
                &col(r, |x| x.at_ms),
            ],
        )
        .await?;
    }
    let r = &rows.counters;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO telemetry_counters (site_id, device_id, counter, value)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::bigint[])
             ON CONFLICT (site_id, device_id, counter) DO UPDATE SET value = EXCLUDED.value
             WHERE telemetry_counters.value < EXCLUDED.value",
            &[
                &site,
                &col(r, |x| x.device.as_str()),
                &col(r, |x| x.counter.as_str()),
                &col(r, |x| x.value),
            ],
        )
        .await?;
    }
    let r = &rows.incidents;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO incidents (site_id, device_id, incident_key, kind, subject, started_ms, resolved_ms)
             SELECT $1::text, * FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])
             ON CONFLICT (site_id, device_id, incident_key) DO UPDATE SET resolved_ms = EXCLUDED.resolved_ms
             WHERE incidents.resolved_ms IS NULL AND EXCLUDED.resolved_ms IS NOT NULL",
            &[
                &site,
                &col(r, |x| x.device.as_str()),
                &col(r, |x| x.key.as_str()),
                &col(r, |x| x.kind.as_str()),
                &col(r, |x| x.subject.as_str()),
                &col(r, |x| x.started_ms),
                &col(r, |x| x.resolved_ms),
            ],
        )
        .await?;
    }
    if !cursors.is_empty() {
        let heads: Vec<String> = col(cursors, |c| c.heads.join(","));
        exec(
            tx,
            "INSERT INTO document_cursors (origin_device, site_id, doc_id, doc_name, heads)
             SELECT $1::text, $2::text, d, n, string_to_array(h, ',') FROM unnest($3::text[], $4::text[], $5::text[]) AS u(d, n, h)
             ON CONFLICT (origin_device, doc_id) DO UPDATE SET heads = EXCLUDED.heads, loaded_at = now()",
            &[
                &origin,
                &site,
                &col(cursors, |c| c.doc_id.as_str()),
                &col(cursors, |c| c.doc_name.as_str()),
                &heads,
            ],
        )
        .await?;
    }
    Ok(n)
}

/// Writes one reconciliation run (its summary replaces an earlier run's of the same batch; exceptions add up).
pub async fn batch(
    tx: &Transaction<'_>,
    site: &str,
    origin: &str,
    b: &BatchRow,
) -> Result<u64, WarehouseError> {
    let mut n = exec(
        tx,
        "INSERT INTO reconciliation_batches (site_id, batch, origin_device, reconciled_at_ms, matched, exceptions, clean)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (site_id, batch) DO UPDATE
           SET origin_device = EXCLUDED.origin_device, reconciled_at_ms = EXCLUDED.reconciled_at_ms,
               matched = EXCLUDED.matched, exceptions = EXCLUDED.exceptions, clean = EXCLUDED.clean
         WHERE reconciliation_batches.reconciled_at_ms < EXCLUDED.reconciled_at_ms",
        &[
            &site,
            &b.batch,
            &origin,
            &b.reconciled_at_ms,
            &b.matched,
            &b.exceptions,
            &b.clean,
        ],
    )
    .await?;
    let r = &b.rows;
    if !r.is_empty() {
        n += exec(
            tx,
            "INSERT INTO reconciliation_exceptions (site_id, batch, outcome, token, line, device_id, amount_minor,
                                                    currency, processor_amount_minor, processor_currency, detail)
             SELECT $1::text, $2::text, * FROM unnest($3::text[], $4::text[], $5::bigint[], $6::text[], $7::bigint[], $8::text[],
                                          $9::bigint[], $10::text[], $11::text[])
             ON CONFLICT (site_id, batch, outcome, token, line) DO NOTHING",
            &[
                &site,
                &b.batch,
                &col(r, |x| x.outcome.as_str()),
                &col(r, |x| x.token.as_str()),
                &col(r, |x| x.line),
                &col(r, |x| x.device.as_deref()),
                &col(r, |x| x.amount_minor),
                &col(r, |x| x.currency.as_deref()),
                &col(r, |x| x.processor_amount_minor),
                &col(r, |x| x.processor_currency.as_deref()),
                &col(r, |x| x.detail.as_deref()),
            ],
        )
        .await?;
    }
    Ok(n)
}
