//! `popmesh status`: what the running node says about itself, for a person.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Result;

use popmesh_node::site::DataDir;
/// `popmesh status`: asks the running node.
pub fn status(data: &Path, api: Option<SocketAddr>, json: bool) -> Result<()> {
    let dir = DataDir::load(data)?;
    let client = crate::cmd::node_client(data, api, std::time::Duration::from_secs(30))?;
    let answer = client.get("/v1/status").map_err(|e| {
        anyhow::anyhow!("{e}\n(is `popmesh run --data {}` running? its API address is set by --api or [api] listen)", data.display())
    })?;
    let s = answer.json();
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let str_of = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
    println!(
        "{} ({}) at site \"{}\" {}",
        dir.site.device_name, dir.site.role, dir.site.site_name, dir.site.site_id
    );
    println!("  device     {}", str_of(&s["device"]));
    println!(
        "  directory  {} ({}, {})",
        str_of(&s["directory"]),
        if s["directory_synced"] == true {
            "synced"
        } else {
            "not synced yet"
        },
        if s["enrolled"] == true {
            "enrolled"
        } else {
            "not enrolled yet"
        }
    );
    println!(
        "  documents  {} open of {} registered",
        s["documents"]["open"], s["documents"]["registered"]
    );
    println!(
        "  store      {} bytes, {} acknowledged writes since start{}",
        s["store"]["bytes"],
        s["store"]["acknowledged_writes"],
        if s["store"]["healthy"] == true {
            String::new()
        } else {
            format!(
                "; REFUSES WRITES ({}): payments and bookings answer 503 until it recovers",
                str_of(&s["store"]["fault"]["reason"])
            )
        }
    );
    if s["store"]["below_reserve"] == true {
        println!(
            "  disk       {} bytes free, below the reserve kept for money: media preseed and uploads stopped",
            s["store"]["free_bytes"]
        );
    }
    if s["ready"] != true {
        let loading: Vec<String> = s["loading"]
            .as_array()
            .map(|l| l.iter().map(|v| str_of(v).to_owned()).collect())
            .unwrap_or_default();
        println!(
            "  ready      no: money requests answer 503 while it loads {}",
            loading.join(", ")
        );
    }
    let m = &s["media"];
    println!(
        "  media      {} of {} manifest entries preseeded ({:.0}% of {} bytes), blob port udp/{}",
        m["complete"],
        m["entries"],
        m["completeness"].as_f64().unwrap_or(0.0) * 100.0,
        m["wanted_bytes"],
        s["media_port"]
    );
    let peers = s["peers"].as_array().cloned().unwrap_or_default();
    println!("  peers      {}", peers.len());
    for p in peers {
        let lag = match p["documents_behind"].as_u64() {
            Some(0) => "in sync".to_owned(),
            Some(n) => format!("{n} documents behind"),
            None => "no sync session".to_owned(),
        };
        println!(
            "    {:<12} {:<7} {}  {}{}",
            p["name"].as_str().unwrap_or("?"),
            p["role"].as_str().unwrap_or("?"),
            &str_of(&p["device"]).chars().take(12).collect::<String>(),
            lag,
            if p["admitted"] == true {
                ""
            } else {
                " (not admitted)"
            }
        );
    }
    Ok(())
}
