//! `popmesh warehouse migrate | status | replay`: the warehouse's schema, what it holds, and sending it everything
//! again. `migrate` and `status` talk to PostgreSQL (the URL from `--url` or the data directory's
//! `[warehouse] postgres_url`); `status` also asks the running origin what it owes, and `replay` asks it to resend.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use popmesh_node::config::Config;
use popmesh_node::node::warehouse::{self, schema};
use popmesh_node::site::DataDir;

fn url_of(data: &Path, url: Option<String>) -> Result<(Config, String)> {
    let config = Config::load(&DataDir::config_path(data))?;
    let url = url.unwrap_or_else(|| config.warehouse.postgres_url.clone());
    if url.is_empty() {
        bail!(
            "no warehouse: set [warehouse] postgres_url in {} or pass --url",
            DataDir::config_path(data).display()
        );
    }
    Ok((config, url))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn connect(url: &str) -> Result<tokio_postgres::Client> {
    let (client, connection) = warehouse::pg_config(url)?
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(warehouse::WarehouseError::from)
        .context("connecting to the warehouse database")?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("warehouse connection ended: {e}");
        }
    });
    Ok(client)
}

/// `popmesh warehouse migrate`: applies the migrations the database lacks.
pub fn migrate(data: &Path, url: Option<String>) -> Result<()> {
    let (_, url) = url_of(data, url)?;
    runtime()?.block_on(async {
        let mut client = connect(&url).await?;
        let applied = schema::migrate(&mut client).await?;
        if applied.is_empty() {
            println!(
                "the warehouse schema is up to date (version {})",
                schema::needed()
            );
        } else {
            for v in &applied {
                let name = warehouse::MIGRATIONS
                    .iter()
                    .find(|m| m.version == *v)
                    .map_or("", |m| m.name);
                println!("applied migration {v} ({name})");
            }
            println!("the warehouse schema is at version {}", schema::needed());
        }
        Ok(())
    })
}

/// What the database holds, per site and per origin.
async fn database_state(client: &tokio_postgres::Client) -> Result<Value> {
    let applied = schema::applied(client).await?;
    let current = applied.last().copied().unwrap_or(0);
    if current < schema::needed() {
        return Ok(json!({ "schema": { "version": current, "needed": schema::needed() } }));
    }
    let sites = client
        .query(
            "SELECT s.site_id, s.name,
                (SELECT count(*) FROM shows x WHERE x.site_id = s.site_id),
                (SELECT count(*) FROM receipts x WHERE x.site_id = s.site_id AND x.verified),
                (SELECT count(*) FROM receipts x WHERE x.site_id = s.site_id AND NOT x.verified),
                (SELECT count(*) FROM bookings x WHERE x.site_id = s.site_id),
                (SELECT count(*) FROM checkins x WHERE x.site_id = s.site_id),
                (SELECT count(*) FROM incidents x WHERE x.site_id = s.site_id)
             FROM sites s ORDER BY s.name, s.site_id",
            &[],
        )
        .await
        .map_err(warehouse::WarehouseError::from)?;
    let origins = client
        .query(
            "SELECT c.origin_device, c.site_id, coalesce(d.name, ''), count(*),
                    to_char(max(c.loaded_at), 'YYYY-MM-DD HH24:MI:SS TZ')
             FROM document_cursors c
             LEFT JOIN devices d ON d.site_id = c.site_id AND d.device_id = c.origin_device
             GROUP BY 1, 2, 3 ORDER BY 2, 3",
            &[],
        )
        .await
        .map_err(warehouse::WarehouseError::from)?;
    Ok(json!({
        "schema": { "version": current, "needed": schema::needed() },
        "sites": sites.iter().map(|r| json!({
            "site": r.get::<_, String>(0), "name": r.get::<_, String>(1), "shows": r.get::<_, i64>(2),
            "receipts": r.get::<_, i64>(3), "rejected_receipts": r.get::<_, i64>(4), "bookings": r.get::<_, i64>(5),
            "checkins": r.get::<_, i64>(6), "incidents": r.get::<_, i64>(7),
        })).collect::<Vec<_>>(),
        "origins": origins.iter().map(|r| json!({
            "device": r.get::<_, String>(0), "site": r.get::<_, String>(1), "name": r.get::<_, String>(2),
            "documents": r.get::<_, i64>(3), "last_write": r.get::<_, Option<String>>(4),
        })).collect::<Vec<_>>(),
    }))
}

/// `popmesh warehouse status`: the schema, what the database holds per site and origin, and what the running
/// origin still owes.
pub fn status(data: &Path, url: Option<String>, api: Option<SocketAddr>, json: bool) -> Result<()> {
    let (_, url) = url_of(data, url)?;
    let database = runtime()?.block_on(async {
        match connect(&url).await {
            Ok(client) => database_state(&client).await,
            Err(e) => Ok(json!({ "unreachable": format!("{e:#}") })),
        }
    })?;
    let node = crate::cmd::node_client(data, api, std::time::Duration::from_secs(30))?
        .get("/v1/warehouse")
        .ok()
        .filter(|a| a.status == 200)
        .map(|a| a.json());
    let all = json!({ "database": database, "origin": node });
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    if let Some(e) = database["unreachable"].as_str() {
        println!("database: unreachable: {e}");
    } else {
        let (v, needed) = (
            &database["schema"]["version"],
            &database["schema"]["needed"],
        );
        if v == needed {
            println!("database: schema version {v} (up to date)");
        } else {
            println!(
                "database: schema version {v}, this popmesh writes {needed}: run `popmesh warehouse migrate`"
            );
        }
        for s in database["sites"].as_array().into_iter().flatten() {
            println!(
                "site \"{}\" {}: {} shows, {} receipts ({} rejected), {} bookings, {} check-ins, {} incidents",
                s["name"].as_str().unwrap_or(""),
                s["site"].as_str().unwrap_or(""),
                s["shows"],
                s["receipts"],
                s["rejected_receipts"],
                s["bookings"],
                s["checkins"],
                s["incidents"]
            );
        }
        for o in database["origins"].as_array().into_iter().flatten() {
            println!(
                "origin {} ({}): {} documents written, last at {}",
                o["name"].as_str().unwrap_or(""),
                o["device"].as_str().unwrap_or("").get(..16).unwrap_or(""),
                o["documents"],
                o["last_write"].as_str().unwrap_or("-")
            );
        }
    }
    match &all["origin"] {
        Value::Null => println!(
            "this origin: not running (or no warehouse configured), so what it owes is unknown"
        ),
        o => println!(
            "this origin: {}; owes {} documents{}, {} reconciliation findings{}",
            if o["connected"] == true {
                "connected".to_owned()
            } else {
                format!(
                    "NOT connected ({})",
                    o["error"].as_str().unwrap_or("not tried yet")
                )
            },
            o["owed_documents"],
            if o["overflow"] == true {
                " (queue full: every document is compared on reconnect)"
            } else {
                ""
            },
            o["pending_reconciliation_rows"],
            o["oldest_owed_ms_ago"]
                .as_u64()
                .map(|ms| format!("; oldest change waiting {} s", ms / 1000))
                .unwrap_or_default()
        ),
    }
    Ok(())
}

/// `popmesh warehouse replay`: the running origin sends every document again.
pub fn replay(data: &Path, api: Option<SocketAddr>) -> Result<()> {
    let answer = crate::cmd::node_client(data, api, std::time::Duration::from_secs(30))?
        .post("/v1/warehouse/replay", &json!({}))
        .map_err(|e| {
            anyhow::anyhow!("{e}\n(is `popmesh run --data {}` running?)", data.display())
        })?;
    if answer.status != 202 {
        bail!(
            "the origin did not replay ({}): {}",
            answer.status,
            answer.body
        );
    }
    println!(
        "the origin compares every document with the warehouse again and writes what it lacks; \
         `popmesh warehouse status` shows when it owes nothing"
    );
    Ok(())
}
