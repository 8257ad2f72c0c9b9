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
    let dir = DataDir::load(data)?;
    if !matches!(dir.cert.role, Role::Edge | Role::Origin) {
        bail!(
            "a {} may not issue client tokens; the edge box or the origin does",
            dir.cert.role
        );
    }
    let mut id = [0u8; 32];
    getrandom::fill(&mut id).context("drawing the token id")?;
    let token = ClientToken::issue(
        &dir.key,
        dir.site_id(),
        id,
        role,
        label,
        clock::now(),
        valid_ms,
    )?;
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

/// Revokes a client token through the directory (needs the site authority key and this device's node running):
/// every node refuses it as the directory syncs.
pub fn revoke(data: &Path, id: &str, reason: &str, api: Option<SocketAddr>) -> Result<()> {
    let dir = DataDir::load(data)?;
    let authority = dir.authority_key()?;
    let id = ClientToken::parse_id(id)?;
    let revocation = authority.revoke(RevocationTarget::Token(id), clock::now(), reason);
    let body = serde_json::json!({
        "revocation": base64::engine::general_purpose::STANDARD_NO_PAD.encode(revocation.to_bytes())
    });
    let client = crate::cmd::node_client(data, api, std::time::Duration::from_secs(30))?;
    let answer = client.post("/v1/revocations", &body)?;
    if answer.status != 201 {
        bail!(
            "the node refused the revocation ({}): {}",
            answer.status,
            answer.body
        );
    }
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    println!("client token {hex} revoked; every node refuses it as the directory syncs");
    Ok(())
}
