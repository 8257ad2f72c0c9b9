//! `popmesh report --out DIR`: the show report as files a producer opens: `report.json` (everything),
//! `timeline.csv`, `devices.csv`, `outages.csv`, and `report.html`, one self-contained page (inline CSS and SVG
//! charts, no scripts, nothing fetched) that opens from a USB stick on any laptop.
//!
//! The numbers come from [`popmesh_crdt::report`], computed on the node from merged documents; this module only
//! lays them out.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use popmesh_crdt::report::{Outage, ShowReport};

/// Writes every report file into `dir` (created if needed) and returns their paths.
pub fn write(report: &ShowReport, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the report directory {}", dir.display()))?;
    let files = [
        ("report.json", serde_json::to_string_pretty(report)?),
        ("timeline.csv", timeline_csv(report)),
        ("devices.csv", devices_csv(report)),
        ("outages.csv", outages_csv(report)),
        ("report.html", html(report)),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = dir.join(name);
        popmesh_node::site::write_atomic(&path, text.as_bytes(), false)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn currencies(report: &ShowReport) -> Vec<String> {
    report.totals.amounts.keys().cloned().collect()
}

fn timeline_csv(r: &ShowReport) -> String {
    let cur = currencies(r);
    let mut out = String::from("bucket_start_ms,bookings,seats,payments,checkins");
    for c in &cur {
        let _ = write!(out, ",amount_minor_{c}");
    }
    out.push('\n');
    for b in &r.timeline {
        let _ = write!(
            out,
            "{},{},{},{},{}",
            b.start, b.bookings, b.seats, b.payments, b.checkins
        );
        for c in &cur {
            let _ = write!(out, ",{}", b.amounts.get(c).copied().unwrap_or(0));
        }
        out.push('\n');
    }
    out
}

fn devices_csv(r: &ShowReport) -> String {
    let cur = currencies(r);
    let mut out = String::from("device,name,role,bookings,seats,payments,checkins");
    for c in &cur {
        let _ = write!(out, ",amount_minor_{c}");
    }
    out.push('\n');
    for d in &r.devices {
        let _ = write!(
            out,
            "{},{},{},{},{},{},{}",
            d.device,
            csv_field(&d.name),
            d.role,
            d.bookings,
            d.seats,
            d.payments,
            d.checkins
        );
        for c in &cur {
            let _ = write!(out, ",{}", d.amounts.get(c).copied().unwrap_or(0));
        }
        out.push('\n');
    }
    out
}

fn outages_csv(r: &ShowReport) -> String {
    let mut out = String::from("kind,start_ms,end_ms,duration_ms,devices\n");
    let rows = |kind: &str, list: &[Outage], out: &mut String| {
        for o in list {
            let _ = writeln!(
                out,
                "{kind},{},{},{},{}",
                o.start,
                o.end.map(|e| e.to_string()).unwrap_or_default(),
                o.end.map(|e| (e - o.start).to_string()).unwrap_or_default(),
                o.devices
            );
        }
    };
    rows("site", &r.operations.outages, &mut out);
    rows("uplink", &r.operations.uplink_outages, &mut out);
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Minor units as major units with two decimals (the report does not know each currency's exponent; the
/// JSON and CSV keep minor units exactly).
fn money(minor: u64, currency: &str) -> String {
    format!("{}.{:02} {currency}", minor / 100, minor % 100)
}

fn money_map(m: &std::collections::BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(c, v)| money(*v, c))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn duration(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms} ms"),
        1_000..=59_999 => format!("{:.1} s", ms as f64 / 1000.0),
        60_000..=3_599_999 => format!("{:.1} min", ms as f64 / 60_000.0),
        _ => format!("{:.1} h", ms as f64 / 3_600_000.0),
    }
}

fn clock_label(ms: u64, bucket_ms: u64) -> String {
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    if bucket_ms < 60_000 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}")
    }
}

/// A vertical bar chart as inline SVG, with the value on hover (`<title>`) and labels on the first, middle and
/// last bars.
fn bars(title: &str, labels: &[String], values: &[f64], color: &str, unit: &str) -> String {
    let (w, h, pad_l, pad_b, pad_t) = (560.0, 200.0, 44.0, 28.0, 24.0);
    let max = values.iter().cloned().fold(0.0_f64, f64::max).max(1.0);
    let n = values.len().max(1) as f64;
    let slot = (w - pad_l - 8.0) / n;
    let mut svg = format!(
        r#"<figure><figcaption>{}</figcaption><svg viewBox="0 0 {w} {h}" role="img" aria-label="{}">"#,
        esc(title),
        esc(title)
    );
    let base = h - pad_b;
    let _ = write!(
        svg,
        r##"<line x1="{pad_l}" y1="{base}" x2="{}" y2="{base}" stroke="#999"/>"##,
        w - 4.0
    );
    for frac in [0.5, 1.0] {
        let y = base - (base - pad_t) * frac;
        let _ = write!(
            svg,
            r##"<line x1="{pad_l}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" class="axis" text-anchor="end">{}</text>"##,
            w - 4.0,
            pad_l - 4.0,
            y + 4.0,
            fmt_num(max * frac)
        );
    }
    for (i, v) in values.iter().enumerate() {
        let bh = (base - pad_t) * v / max;
        let x = pad_l + slot * i as f64 + slot * 0.1;
        let _ = write!(
            svg,
            r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{bh:.1}" fill="{color}"><title>{}: {} {}</title></rect>"#,
            base - bh,
            (slot * 0.8).max(1.0),
            esc(labels.get(i).map(String::as_str).unwrap_or("")),
            fmt_num(*v),
            esc(unit)
        );
    }
    let marks: Vec<usize> = match values.len() {
        0 => vec![],
        1 => vec![0],
        len => vec![0, len / 2, len - 1],
    };
    for i in marks {
        let x = pad_l + slot * i as f64 + slot / 2.0;
        let _ = write!(
            svg,
            r#"<text x="{x:.1}" y="{}" class="axis" text-anchor="middle">{}</text>"#,
            h - 8.0,
            esc(labels.get(i).map(String::as_str).unwrap_or(""))
        );
    }
    svg.push_str("</svg></figure>");
    svg
}

fn fmt_num(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

fn html(r: &ShowReport) -> String {
    let labels: Vec<String> = r
        .timeline
        .iter()
        .map(|b| clock_label(b.start, r.bucket_ms))
        .collect();
    let main_currency = r
        .totals
        .amounts
        .iter()
        .max_by_key(|(_, v)| **v)
        .map(|(c, _)| c.clone());
    let mut page = String::new();
    let _ = write!(
        page,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">
<title>Show report: {show}</title><style>
body{{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}}
h1{{margin-bottom:.2rem}} .sub{{color:#666;margin-top:0}}
.cards{{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:.8rem;margin:1.2rem 0}}
.card{{border:1px solid #ddd;border-radius:8px;padding:.7rem .9rem}} .card b{{display:block;font-size:1.5rem}}
.grid{{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1rem}}
figure{{margin:0;border:1px solid #eee;border-radius:8px;padding:.6rem}} figcaption{{font-weight:600;margin-bottom:.3rem}}
svg{{width:100%;height:auto}} .axis{{font-size:10px;fill:#666}}
table{{border-collapse:collapse;width:100%;margin:.5rem 0 1.5rem}} td,th{{border-bottom:1px solid #eee;padding:.3rem .5rem;text-align:left}}
td.n,th.n{{text-align:right;font-variant-numeric:tabular-nums}} .note{{color:#666;font-size:.9rem}}
</style></head><body>
<h1>Show report: {show}</h1><p class="sub">Generated {generated} (UTC) from the merged site documents. Attendees appear only as counts; no personal data is in this report.</p>
"#,
        show = esc(&r.show),
        generated = clock_label(r.generated_at, 1000),
    );
    let card = |page: &mut String, label: &str, value: String| {
        let _ = write!(
            page,
            r#"<div class="card">{}<b>{}</b></div>"#,
            esc(label),
            esc(&value)
        );
    };
    page.push_str(r#"<div class="cards">"#);
    card(
        &mut page,
        "Seats booked",
        format!("{} of {}", r.totals.seats, r.totals.capacity),
    );
    card(&mut page, "Payments", r.totals.payments.to_string());
    card(&mut page, "Taken", money_map(&r.totals.amounts));
    card(&mut page, "Unreconciled", money_map(&r.totals.unreconciled));
    card(
        &mut page,
        "Attendee check-ins",
        r.totals.attendee_checkins.to_string(),
    );
    card(
        &mut page,
        "Conversion",
        format!("{:.0}%", r.conversion.rate * 100.0),
    );
    card(
        &mut page,
        "Engagement score",
        format!("{} / 100", r.engagement.score),
    );
    card(
        &mut page,
        "MTTR",
        r.operations
            .mttr_ms
            .map(duration)
            .unwrap_or_else(|| "no outage".into()),
    );
    page.push_str("</div>");
    if r.totals.rejected_receipts > 0 {
        let _ = write!(
            page,
            r#"<p><b>{} receipt(s) did not verify</b> and are left out of every figure (see <code>popmesh reconcile</code> for the reasons).</p>"#,
            r.totals.rejected_receipts
        );
    }

    page.push_str(r#"<h2>Bookings and sales over time</h2><div class="grid">"#);
    let bucket = duration(r.bucket_ms);
    page.push_str(&bars(
        &format!("Seats booked per {bucket}"),
        &labels,
        &r.timeline
            .iter()
            .map(|b| b.seats as f64)
            .collect::<Vec<_>>(),
        "#3b6fd8",
        "seats",
    ));
    if let Some(c) = &main_currency {
        page.push_str(&bars(
            &format!("Sales per {bucket} ({c})"),
            &labels,
            &r.timeline
                .iter()
                .map(|b| b.amounts.get(c).copied().unwrap_or(0) as f64 / 100.0)
                .collect::<Vec<_>>(),
            "#2f9e6e",
            c,
        ));
    }
    page.push_str(&bars(
        &format!("Check-ins per {bucket}"),
        &labels,
        &r.timeline
            .iter()
            .map(|b| b.checkins as f64)
            .collect::<Vec<_>>(),
        "#8a5cd1",
        "check-ins",
    ));
    page.push_str("</div>");

    let c = &r.conversion;
    let _ = write!(
        page,
        r#"<h2>Conversion velocity</h2><p>{} of {} checked-in attendees bought after check-in ({:.0}%). Median time from check-in to first purchase: <b>{}</b>; 90th percentile: {}.</p><div class="grid">"#,
        c.converted,
        c.checked_in,
        c.rate * 100.0,
        c.median_ms.map(duration).unwrap_or_else(|| "n/a".into()),
        c.p90_ms.map(duration).unwrap_or_else(|| "n/a".into()),
    );
    page.push_str(&bars(
        "Check-in to first purchase (attendees)",
        &c.histogram
            .iter()
            .map(|(l, _)| l.clone())
            .collect::<Vec<_>>(),
        &c.histogram
            .iter()
            .map(|(_, n)| *n as f64)
            .collect::<Vec<_>>(),
        "#d8843b",
        "attendees",
    ));
    let rt = &r.retention;
    page.push_str(&bars(
        "Conversion: new vs returning attendees (%)",
        &["new".to_owned(), "returning".to_owned()],
        &[rt.new_conversion * 100.0, rt.returning_conversion * 100.0],
        "#c44f7a",
        "%",
    ));
    let _ = write!(
        page,
        r#"</div><h2>Retention lift</h2><p>{} returning attendees (checked in at an earlier show of this site, matched on pseudonymous ids) and {} new. Retention lift: <b>{}</b> (returning conversion over new conversion).</p>"#,
        rt.returning,
        rt.new,
        rt.lift
            .map(|l| format!("{l:.2}x"))
            .unwrap_or_else(|| "n/a (a group is empty or new attendees never bought)".into())
    );

    let e = &r.engagement;
    let _ = write!(
        page,
        r#"<h2>Engagement</h2><p>Score <b>{} / 100</b>: {} interactions counted site-wide, {:.1} per checked-in attendee. Only aggregate counters are used; events about attendees who did not consent to analytics are never counted.</p><table><tr><th>counter</th><th class="n">total</th></tr>"#,
        e.score, e.interactions, e.per_attendee
    );
    for (name, v) in &e.counters {
        let _ = write!(
            page,
            r#"<tr><td>{}</td><td class="n">{v}</td></tr>"#,
            esc(name)
        );
    }
    page.push_str("</table>");

    let o = &r.operations;
    let _ = write!(
        page,
        r#"<h2>Operations</h2><p>{} site outage(s) (a period when some device could not reach a peer it had reached), MTTR <b>{}</b>; {} uplink outage(s), MTTR <b>{}</b>; {} still open. From {} incident records.</p><table><tr><th>kind</th><th>start</th><th class="n">duration</th><th class="n">devices out of reach</th></tr>"#,
        o.outages.len(),
        o.mttr_ms.map(duration).unwrap_or_else(|| "n/a".into()),
        o.uplink_outages.len(),
        o.uplink_mttr_ms
            .map(duration)
            .unwrap_or_else(|| "n/a".into()),
        o.open,
        o.incidents
    );
    for (kind, list) in [("site", &o.outages), ("uplink", &o.uplink_outages)] {
        for out in list {
            let _ = write!(
                page,
                r#"<tr><td>{kind}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
                clock_label(out.start, 1000),
                out.end
                    .map(|e| duration(e - out.start))
                    .unwrap_or_else(|| "open".into()),
                out.devices
            );
        }
    }
    page.push_str("</table>");

    page.push_str(r#"<h2>Devices</h2><table><tr><th>device</th><th>role</th><th class="n">bookings</th><th class="n">seats</th><th class="n">payments</th><th class="n">taken</th><th class="n">check-ins</th></tr>"#);
    for d in &r.devices {
        let _ = write!(
            page,
            r#"<tr><td>{}</td><td>{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td><td class="n">{}</td></tr>"#,
            esc(&d.name),
            esc(&d.role),
            d.bookings,
            d.seats,
            d.payments,
            esc(&money_map(&d.amounts)),
            d.checkins
        );
    }
    page.push_str(r#"</table><p class="note">Data: report.json (everything), timeline.csv, devices.csv, outages.csv. Amounts in the CSV and JSON are minor units.</p></body></html>"#);
    page.push('\n');
    page
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_devices_cannot_break_the_page_or_the_csv() {
        assert_eq!(esc("<script>&\""), "&lt;script&gt;&amp;&quot;");
        assert_eq!(csv_field("kiosk, \"east\""), "\"kiosk, \"\"east\"\"\"");
        assert_eq!(duration(90_000), "1.5 min");
        assert_eq!(clock_label(3_723_000, 1000), "01:02:03");
    }
}
