//! `popmesh token issue` and `popmesh token revoke`: client tokens for tablets, screens and laptops that call the
//! API (`popmesh_crdt::client_token`).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use popmesh_crdt::Role;
use popmesh_crdt::client_token::{ClientRole, ClientToken};
use popmesh_crdt::enrollment::RevocationTarget;
use popmesh_node::clock;
use popmesh_node::site::DataDir;

/// Signs a client token with this device's key (an edge box or the origin). Works offline: every node checks the
/// token against its own directory replica.
pub fn issue(data: &Path, role: ClientRole, valid_ms: u64, label: &str, json: bool) -> Result<()> {
    let token = signed(data, role, valid_ms, label)?;
    if json {
        let out = serde_json::json!({
            "token": token.to_text(),
            "id": token.id_hex(),
            "role": role,
            "label": token.label,
            "expires_at_ms": token.expires_at.0,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("{}", token.to_text());
        eprintln!(
            "a {role} token{}, id {}, valid until {} (unix ms); send it as Authorization: Bearer ...; revoke with \
             `popmesh token revoke --data {} {}`",
            if label.is_empty() {
                String::new()
            } else {
                format!(" for {label:?}")
            },
            token.id_hex(),
            token.expires_at.0,
            data.display(),
            token.id_hex()
        );
    }
    Ok(())
}

/// A host for the pairing code: an IP address, or a DNS name (letters, digits, `-` and `.`, at most 253 bytes).
fn checked_host(host: &str) -> Result<String> {
    let h = host.trim().trim_start_matches('[').trim_end_matches(']');
    if h.parse::<std::net::IpAddr>().is_ok() {
        return Ok(h.to_owned());
    }
    let name_ok = !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !name_ok {
        bail!(
            "--host {host:?} is neither an IP address nor a host name (such as 192.168.1.10 or edge-1.local)"
        );
    }
    Ok(h.to_ascii_lowercase())
}

/// A new client token signed with this device's key, which must be the edge box's or the origin's.
fn signed(data: &Path, role: ClientRole, valid_ms: u64, label: &str) -> Result<ClientToken> {
    let dir = DataDir::load(data)?;
    if !matches!(dir.cert.role, Role::Edge | Role::Origin) {
        bail!(
            "a {} may not issue client tokens; the edge box or the origin does",
            dir.cert.role
        );
    }
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).context("drawing the token id")?;
    Ok(ClientToken::issue(
        &dir.key,
        dir.site_id(),
        id,
        role,
        label,
        clock::now(),
        valid_ms,
    )?)
}

/// Revokes a client token through the directory (needs the site authority key and this device's node running):
/// every node refuses it as the directory syncs.
pub fn revoke(data: &Path, id: &str, reason: &str, api: Option<SocketAddr>) -> Result<()> {
    let dir = DataDir::load(data)?;
    let authority = dir.authority_key()?;
    let id = ClientToken::parse_id(id)?;
    let revocation = authority.revoke(RevocationTarget::Token(id), clock::now(), reason);
    let client = crate::cmd::node_client(data, api, std::time::Duration::from_secs(30))?;
    crate::cmd::cli::post_revocation(&client, &revocation)?;
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    println!("client token {hex} revoked; every node refuses it as the directory syncs");
    Ok(())
}

/// Prints the pairing code a tablet or screen scans: the API's TLS address, its certificate's fingerprint to pin,
/// and (with `role`, on the edge box or the origin) a client token. Reads the running node's `run.json`.
pub fn pair(
    data: &Path,
    host: Option<&str>,
    token: Option<(ClientRole, u64, &str)>,
    json: bool,
) -> Result<()> {
    let run = popmesh_node::runfile::RunFile::read_live(data).with_context(|| {
        format!(
            "no node is running on {} (start `popmesh run --data {}`)",
            data.display(),
            data.display()
        )
    })?;
    let (Some(bound), Some(fingerprint)) = (run.tls, run.tls_fingerprint) else {
        bail!(
            "the running node has no TLS listener: set [api] tls_listen in popmesh.toml and restart it"
        );
    };
    let host = match host {
        Some(h) => checked_host(h)?,
        None if bound.ip().is_unspecified() => {
            bail!(
                "the TLS listener is on {bound}: say which address tablets reach it at, with --host"
            )
        }
        None => bound.ip().to_string(),
    };
    let api = if host.contains(':') && !host.starts_with('[') {
        format!("https://[{host}]:{}", bound.port())
    } else {
        format!("https://{host}:{}", bound.port())
    };
    let mut code = serde_json::json!({ "api": api, "sha256": fingerprint });
    if let Some((role, valid_ms, label)) = token {
        let issued = signed(data, role, valid_ms, label)?;
        code["token"] = issued.to_text().into();
        code["role"] = role.as_str().into();
    }
    let line = format!(
        "popmesh-pair1.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(code.to_string())
    );
    if json {
        code["code"] = line.into();
        println!("{}", serde_json::to_string_pretty(&code)?);
    } else {
        println!("{line}");
        eprintln!(
            "pairing code for {api}, certificate sha256 {fingerprint} (show it as a QR code to scan)"
        );
    }
    Ok(())
}
