-- popmesh warehouse, version 2: the show report's figures as views, computed the way `popmesh report`
-- (crdt/src/report.rs) computes them, so the same show reads the same in SQL. node/tests/warehouse.rs checks it.

-- What became of each receipt: rejected (did not verify), matched (its ledger carries the settlement batch's mark),
-- the latest batch's finding about it (missing_at_processor, amount_mismatch, declined), or unreconciled.
CREATE VIEW receipt_outcomes AS
SELECT r.site_id, r.token, r.show_id, r.device_id, r.amount_minor, r.currency,
       CASE WHEN NOT r.verified THEN 'rejected'
            WHEN r.reconciled_batch IS NOT NULL THEN 'matched'
            ELSE coalesce(x.outcome, 'unreconciled') END AS outcome,
       coalesce(r.reconciled_batch, x.batch) AS batch
FROM receipts r
LEFT JOIN LATERAL (
    SELECT e.outcome, e.batch
    FROM reconciliation_exceptions e
    JOIN reconciliation_batches b USING (site_id, batch)
    WHERE e.site_id = r.site_id AND e.token = r.token AND e.outcome <> 'duplicate'
    ORDER BY b.reconciled_at_ms DESC, e.batch DESC
    LIMIT 1
) x ON true;

-- Per show: bookings, seats, payments, check-ins and receipts that did not verify (the report's totals).
CREATE VIEW report_totals AS
SELECT s.site_id, s.show_id,
       (SELECT coalesce(sum(capacity), 0)::bigint FROM slots x WHERE x.site_id = s.site_id AND x.show_id = s.show_id) AS capacity,
       (SELECT count(*) FROM bookings b WHERE b.site_id = s.site_id AND b.show_id = s.show_id) AS bookings,
       (SELECT coalesce(sum(seats), 0)::bigint FROM bookings b WHERE b.site_id = s.site_id AND b.show_id = s.show_id) AS seats,
       (SELECT count(*) FROM receipts r WHERE r.site_id = s.site_id AND r.show_id = s.show_id AND r.verified) AS payments,
       (SELECT count(*) FROM receipts r WHERE r.site_id = s.site_id AND r.show_id = s.show_id AND NOT r.verified)
         + (SELECT count(*) FROM malformed_receipts m WHERE m.site_id = s.site_id AND m.show_id = s.show_id) AS rejected_receipts,
       (SELECT count(*) FROM checkins c WHERE c.site_id = s.site_id AND c.show_id = s.show_id AND c.kind = 'attendee') AS attendee_checkins,
       (SELECT count(*) FROM checkins c WHERE c.site_id = s.site_id AND c.show_id = s.show_id AND c.kind <> 'attendee') AS staff_checkins
FROM shows s;

-- Per show and currency: money taken (verified receipts), reconciled and not.
CREATE VIEW report_takings AS
SELECT site_id, show_id, currency, count(*) AS payments,
       sum(amount_minor)::bigint AS amount_minor,
       coalesce(sum(amount_minor) FILTER (WHERE reconciled_batch IS NOT NULL), 0)::bigint AS reconciled_minor,
       coalesce(sum(amount_minor) FILTER (WHERE reconciled_batch IS NULL), 0)::bigint AS unreconciled_minor
FROM receipts WHERE verified
GROUP BY site_id, show_id, currency;

-- Conversion velocity: an attendee's first check-in at a show to their first purchase (a booking or a verified
-- payment naming them) at or after it.
CREATE VIEW attendee_purchases AS
SELECT site_id, show_id, attendee, at_ms FROM bookings WHERE attendee IS NOT NULL
UNION ALL
SELECT site_id, show_id, attendee, issued_at_ms FROM receipts WHERE verified AND attendee IS NOT NULL;

CREATE VIEW attendee_first_checkins AS
SELECT site_id, show_id, subject, min(at_ms) AS at_ms
FROM checkins WHERE kind = 'attendee' AND subject IS NOT NULL
GROUP BY site_id, show_id, subject;

CREATE VIEW attendee_conversions AS
SELECT f.site_id, f.show_id, f.subject, f.at_ms AS checked_in_at_ms,
       (SELECT min(p.at_ms) FROM attendee_purchases p
        WHERE p.site_id = f.site_id AND p.show_id = f.show_id AND p.attendee = f.subject AND p.at_ms >= f.at_ms)
         - f.at_ms AS delay_ms
FROM attendee_first_checkins f;

-- Percentiles by nearest rank, as the report takes them: rank ceil(p * n / 100), at least 1.
CREATE VIEW report_conversion AS
WITH ranked AS (
    SELECT site_id, show_id, delay_ms,
           row_number() OVER (PARTITION BY site_id, show_id ORDER BY delay_ms) AS rn,
           count(*) OVER (PARTITION BY site_id, show_id) AS n
    FROM attendee_conversions WHERE delay_ms IS NOT NULL
), pct AS (
    SELECT site_id, show_id,
           max(delay_ms) FILTER (WHERE rn = greatest((50 * n + 99) / 100, 1)) AS median_ms,
           max(delay_ms) FILTER (WHERE rn = greatest((90 * n + 99) / 100, 1)) AS p90_ms
    FROM ranked GROUP BY site_id, show_id
), counts AS (
    SELECT site_id, show_id, count(*) AS checked_in, count(delay_ms) AS converted
    FROM attendee_conversions GROUP BY site_id, show_id
)
SELECT s.site_id, s.show_id,
       coalesce(c.checked_in, 0) AS checked_in,
       coalesce(c.converted, 0) AS converted,
       CASE WHEN coalesce(c.checked_in, 0) = 0 THEN 0::float8
            ELSE c.converted::float8 / c.checked_in::float8 END AS rate,
       p.median_ms, p.p90_ms
FROM shows s
LEFT JOIN counts c USING (site_id, show_id)
LEFT JOIN pct p USING (site_id, show_id);

-- Retention lift: attendees checked in at another show of the same site before their first check-in here
-- (returning) convert how much better than the others (new). No lift while either group is empty or no new
-- attendee bought.
CREATE VIEW report_retention AS
WITH attendees AS (
    SELECT f.site_id, f.show_id, f.delay_ms IS NOT NULL AS bought,
           EXISTS (SELECT 1 FROM checkins o
                   WHERE o.site_id = f.site_id AND o.show_id <> f.show_id AND o.subject = f.subject
                     AND o.at_ms < f.checked_in_at_ms) AS is_returning
    FROM attendee_conversions f
), g AS (
    SELECT site_id, show_id,
           count(*) FILTER (WHERE is_returning) AS r, count(*) FILTER (WHERE NOT is_returning) AS nw,
           count(*) FILTER (WHERE is_returning AND bought) AS rb, count(*) FILTER (WHERE NOT is_returning AND bought) AS nb
    FROM attendees GROUP BY site_id, show_id
)
SELECT s.site_id, s.show_id,
       coalesce(g.r, 0) AS returning_attendees, coalesce(g.nw, 0) AS new_attendees,
       CASE WHEN coalesce(g.r, 0) = 0 THEN 0::float8 ELSE g.rb::float8 / g.r::float8 END AS returning_conversion,
       CASE WHEN coalesce(g.nw, 0) = 0 THEN 0::float8 ELSE g.nb::float8 / g.nw::float8 END AS new_conversion,
       CASE WHEN coalesce(g.r, 0) > 0 AND coalesce(g.nb, 0) > 0
            THEN (g.rb::float8 / g.r::float8) / (g.nb::float8 / g.nw::float8) END AS lift
FROM shows s LEFT JOIN g USING (site_id, show_id);

-- Retention across sites: the same, but an attendee is returning when their pseudonym checked in earlier at any
-- other show of any site in this database (meaningful where sites share pseudonyms).
CREATE VIEW retention_across_sites AS
WITH attendees AS (
    SELECT f.site_id, f.show_id, f.delay_ms IS NOT NULL AS bought,
           EXISTS (SELECT 1 FROM checkins o
                   WHERE (o.site_id, o.show_id) <> (f.site_id, f.show_id) AND o.subject = f.subject
                     AND o.at_ms < f.checked_in_at_ms) AS is_returning
    FROM attendee_conversions f
), g AS (
    SELECT site_id, show_id,
           count(*) FILTER (WHERE is_returning) AS r, count(*) FILTER (WHERE NOT is_returning) AS nw,
           count(*) FILTER (WHERE is_returning AND bought) AS rb, count(*) FILTER (WHERE NOT is_returning AND bought) AS nb
    FROM attendees GROUP BY site_id, show_id
)
SELECT site_id, show_id, r AS returning_attendees, nw AS new_attendees,
       CASE WHEN r = 0 THEN 0::float8 ELSE rb::float8 / r::float8 END AS returning_conversion,
       CASE WHEN nw = 0 THEN 0::float8 ELSE nb::float8 / nw::float8 END AS new_conversion,
       CASE WHEN r > 0 AND nb > 0 THEN (rb::float8 / r::float8) / (nb::float8 / nw::float8) END AS lift
FROM g;

-- Engagement from aggregate counters: every counter of the site but popmesh's own and conversion signals (a
-- counter named as one, or under one: `purchase.merch`), per attendee checked in at the show; the score is
-- 100 * (1 - e^(-per_attendee / 10)), rounded half away from zero.
CREATE VIEW site_interactions AS
SELECT t.site_id, coalesce(sum(t.value), 0)::bigint AS interactions
FROM telemetry_counters t
LEFT JOIN sites s USING (site_id)
WHERE NOT starts_with(t.counter, 'popmesh.')
  AND NOT EXISTS (SELECT 1 FROM unnest(s.conversion_signals) AS c(name)
                  WHERE t.counter = c.name OR starts_with(t.counter, c.name || '.'))
GROUP BY t.site_id;

CREATE VIEW report_engagement AS
WITH e AS (
    SELECT s.site_id, s.show_id, coalesce(i.interactions, 0) AS interactions,
           greatest(coalesce(i.interactions, 0), 0)::float8 / greatest(coalesce(c.checked_in, 0), 1)::float8
             AS per_attendee
    FROM shows s
    LEFT JOIN site_interactions i USING (site_id)
    LEFT JOIN report_conversion c USING (site_id, show_id)
), scored AS (
    SELECT *, 100.0::float8 * (1.0::float8 - exp(-per_attendee / 10.0::float8)) AS raw FROM e
)
SELECT site_id, show_id, interactions, per_attendee,
       (CASE WHEN raw - floor(raw) >= 0.5 THEN ceil(raw) ELSE floor(raw) END)::integer AS score
FROM scored;

-- Outages: every device records what it lost, so the site is down while any device misses a peer it had; an
-- outage is a maximal run of overlapping incidents (scope `site`), and of `origin_lost` incidents alone (scope
-- `uplink`). An incident still open keeps its outage open.
CREATE VIEW outages AS
WITH scoped AS (
    SELECT 'site'::text AS scope, site_id, device_id, incident_key, subject, started_ms, resolved_ms FROM incidents
    UNION ALL
    SELECT 'uplink'::text, site_id, device_id, incident_key, subject, started_ms, resolved_ms FROM incidents
    WHERE kind = 'origin_lost'
), reach AS (
    SELECT *, max(coalesce(resolved_ms, 9223372036854775807)) OVER (
               PARTITION BY scope, site_id ORDER BY started_ms, device_id, incident_key
               ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reached
    FROM scoped
), numbered AS (
    SELECT *, sum(CASE WHEN reached IS NULL OR started_ms > reached THEN 1 ELSE 0 END) OVER (
               PARTITION BY scope, site_id ORDER BY started_ms, device_id, incident_key
               ROWS UNBOUNDED PRECEDING) AS outage
    FROM reach
)
SELECT scope, site_id, outage, min(started_ms) AS start_ms,
       CASE WHEN bool_or(resolved_ms IS NULL) THEN NULL ELSE max(resolved_ms) END AS end_ms,
       count(DISTINCT subject) AS devices
FROM numbered
GROUP BY scope, site_id, outage;

-- MTTR: the mean length of the outages that ended (whole milliseconds, rounded down), of the site and of the uplink.
CREATE VIEW report_operations AS
SELECT s.site_id,
       (SELECT count(*) FROM incidents i WHERE i.site_id = s.site_id) AS incidents,
       (SELECT count(*) FROM outages o WHERE o.site_id = s.site_id AND o.scope = 'site') AS outages,
       (SELECT div(sum(greatest(o.end_ms - o.start_ms, 0)), count(*))::bigint FROM outages o
        WHERE o.site_id = s.site_id AND o.scope = 'site' AND o.end_ms IS NOT NULL) AS mttr_ms,
       (SELECT count(*) FROM outages o WHERE o.site_id = s.site_id AND o.scope = 'uplink') AS uplink_outages,
       (SELECT div(sum(greatest(o.end_ms - o.start_ms, 0)), count(*))::bigint FROM outages o
        WHERE o.site_id = s.site_id AND o.scope = 'uplink' AND o.end_ms IS NOT NULL) AS uplink_mttr_ms,
       (SELECT count(*) FROM outages o WHERE o.site_id = s.site_id AND o.scope = 'site' AND o.end_ms IS NULL) AS open
FROM sites s;
