-- popmesh warehouse, version 1: the show data of every site, as the origins merged it.
--
-- Every row carries the site id (32 hex digits, derived from the site's authority key) and is keyed by the fact's
-- natural key, so writing the same fact twice changes nothing and several origins of many sites share one
-- database. There are no foreign keys between the tables: documents reach an origin in any order, and a row
-- never waits for another. Times are Unix milliseconds as the documents carry them (*_ms); amounts are minor units.

-- Sites, and which telemetry counters the writing origin counts as conversion signals (left out of engagement).
CREATE TABLE sites (
    site_id text PRIMARY KEY,
    name text NOT NULL,
    conversion_signals text[] NOT NULL DEFAULT '{}'
);

-- Enrolled devices whose certificate chain verifies.
CREATE TABLE devices (
    site_id text NOT NULL,
    device_id text NOT NULL,
    name text NOT NULL,
    role text NOT NULL,
    PRIMARY KEY (site_id, device_id)
);

-- Show and slot definitions, from the site directory.
CREATE TABLE shows (
    site_id text NOT NULL,
    show_id text NOT NULL,
    name text NOT NULL,
    currency text NOT NULL,
    PRIMARY KEY (site_id, show_id)
);

CREATE TABLE slots (
    site_id text NOT NULL,
    show_id text NOT NULL,
    slot_id text NOT NULL,
    label text NOT NULL,
    starts_at_ms bigint NOT NULL,
    capacity bigint NOT NULL,
    PRIMARY KEY (site_id, show_id, slot_id)
);

-- Seats each device was granted when the slot was created.
CREATE TABLE slot_grants (
    site_id text NOT NULL,
    show_id text NOT NULL,
    slot_id text NOT NULL,
    device_id text NOT NULL,
    seats bigint NOT NULL,
    PRIMARY KEY (site_id, show_id, slot_id, device_id)
);

-- Bookings: one per booking id of the selling device in a slot.
CREATE TABLE bookings (
    site_id text NOT NULL,
    show_id text NOT NULL,
    slot_id text NOT NULL,
    device_id text NOT NULL,
    booking_id text NOT NULL,
    seats bigint NOT NULL,
    at_ms bigint NOT NULL,
    attendee text,
    PRIMARY KEY (site_id, show_id, slot_id, device_id, booking_id)
);

-- Quota moved from one device to another.
CREATE TABLE transfers (
    site_id text NOT NULL,
    show_id text NOT NULL,
    slot_id text NOT NULL,
    from_device text NOT NULL,
    transfer_id text NOT NULL,
    to_device text NOT NULL,
    seats bigint NOT NULL,
    at_ms bigint NOT NULL,
    PRIMARY KEY (site_id, show_id, slot_id, from_device, transfer_id)
);

-- Every signed receipt, verified against the site directory by the origin that wrote it. `verified` is false
-- (with the reason) for receipts that do not verify: forged ones, or issued after their device's revocation.
-- `reconciled_batch` is the settlement batch whose row matched it (the mark in its ledger).
CREATE TABLE receipts (
    site_id text NOT NULL,
    token text NOT NULL,
    show_id text NOT NULL,
    device_id text NOT NULL,
    seq bigint NOT NULL,
    amount_minor bigint NOT NULL,
    currency text NOT NULL,
    issued_at_ms bigint NOT NULL,
    attendee text,
    verified boolean NOT NULL,
    rejection text,
    reconciled_batch text,
    reconciled_at_ms bigint,
    PRIMARY KEY (site_id, token)
);
CREATE INDEX receipts_by_show ON receipts (site_id, show_id);

-- Ledger entries that do not even parse as receipts.
CREATE TABLE malformed_receipts (
    site_id text NOT NULL,
    show_id text NOT NULL,
    device_id text NOT NULL,
    token text NOT NULL,
    reason text NOT NULL,
    PRIMARY KEY (site_id, show_id, device_id, token)
);

-- One row per `popmesh reconcile` batch (the latest run of it), and what the batch did not agree with: receipts
-- missing at the processor, charges missing at the site, amount mismatches, declined payments, duplicate rows and
-- receipts that did not verify. Matched receipts are in `receipts.reconciled_batch`.
CREATE TABLE reconciliation_batches (
    site_id text NOT NULL,
    batch text NOT NULL,
    origin_device text NOT NULL,
    reconciled_at_ms bigint NOT NULL,
    matched bigint NOT NULL,
    exceptions bigint NOT NULL,
    clean boolean NOT NULL,
    PRIMARY KEY (site_id, batch)
);

CREATE TABLE reconciliation_exceptions (
    site_id text NOT NULL,
    batch text NOT NULL,
    outcome text NOT NULL CHECK (outcome IN
        ('missing_at_processor', 'missing_at_site', 'amount_mismatch', 'declined', 'duplicate', 'rejected')),
    token text NOT NULL,
    line bigint NOT NULL,
    device_id text,
    amount_minor bigint,
    currency text,
    processor_amount_minor bigint,
    processor_currency text,
    detail text,
    PRIMARY KEY (site_id, batch, outcome, token, line)
);

-- Check-ins at a show's doors (attendee passes carry a pseudonymous subject; staff passes none).
CREATE TABLE checkins (
    site_id text NOT NULL,
    show_id text NOT NULL,
    device_id text NOT NULL,
    pass_id text NOT NULL,
    at_ms bigint NOT NULL,
    kind text NOT NULL,
    subject text,
    issuer text NOT NULL,
    expires_at_ms bigint NOT NULL,
    PRIMARY KEY (site_id, show_id, device_id, pass_id)
);

CREATE TABLE pass_revocations (
    site_id text NOT NULL,
    show_id text NOT NULL,
    device_id text NOT NULL,
    pass_id text NOT NULL,
    at_ms bigint NOT NULL,
    reason text NOT NULL,
    PRIMARY KEY (site_id, show_id, device_id, pass_id)
);

-- The origin's confirmations of check-ins (the pass is retired).
CREATE TABLE pass_confirmations (
    site_id text NOT NULL,
    show_id text NOT NULL,
    pass_id text NOT NULL,
    at_ms bigint NOT NULL,
    PRIMARY KEY (site_id, show_id, pass_id)
);

-- Telemetry aggregates: each device's counters (they only grow; the larger value wins).
CREATE TABLE telemetry_counters (
    site_id text NOT NULL,
    device_id text NOT NULL,
    counter text NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (site_id, device_id, counter)
);

-- Incidents each device recorded (a peer or the origin out of reach, and when it came back): the outages and MTTR
-- of the show report are merged from these (views in migration 2).
CREATE TABLE incidents (
    site_id text NOT NULL,
    device_id text NOT NULL,
    incident_key text NOT NULL,
    kind text NOT NULL,
    subject text NOT NULL,
    started_ms bigint NOT NULL,
    resolved_ms bigint,
    PRIMARY KEY (site_id, device_id, incident_key)
);

-- Where each origin is: the heads of every document it has written, committed in the same transaction as the rows
-- that came from them. A ledger's heads carry `trust:<digest>` of the directory entries it was verified against.
CREATE TABLE document_cursors (
    origin_device text NOT NULL,
    site_id text NOT NULL,
    doc_id text NOT NULL,
    doc_name text NOT NULL,
    heads text[] NOT NULL,
    loaded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (origin_device, doc_id)
);
