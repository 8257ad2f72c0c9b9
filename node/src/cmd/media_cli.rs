//! `popmesh blob add|get` and `popmesh manifest publish`: talk to the running node's API (the blob store belongs to
//! the node while it runs). Long transfers draw a progress bar on a terminal and stay quiet otherwise.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use popmesh_crdt::manifest::ByteRange;

use popmesh_node::client::{Client, UploadError};

/// Transfers smaller than this draw no bar.
const BAR_FROM_BYTES: u64 = 4 << 20;

fn client(data: &Path, api: Option<SocketAddr>) -> Result<Client> {
    crate::cmd::node_client(data, api, std::time::Duration::from_secs(120))
}

fn not_running(data: &Path) -> String {
    format!(
        "is `popmesh run --data {}` running? its API address is set by --api or [api] listen",
        data.display()
    )
}

fn bar(len: Option<u64>, what: &str) -> ProgressBar {
    let bar = match len {
        Some(len) if len >= BAR_FROM_BYTES => ProgressBar::with_draw_target(
            Some(len),
            // Hidden by indicatif when stderr is not a terminal.
            ProgressDrawTarget::stderr(),
        ),
        _ => ProgressBar::hidden(),
    };
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// One added file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Added {
    pub hash: String,
    pub size: u64,
    pub name: String,
}

fn file_name(file: &Path) -> Result<String> {
    file.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{}: not a file name in UTF-8", file.display()))
}

fn add_one(client: &Client, data: &Path, file: &Path) -> Result<Added> {
    let name = file_name(file)?;
    let len = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    let bar = bar(Some(len), &name);
    let answer = client
        .upload("/v1/blobs", file, &mut |sent| bar.set_position(sent))
        .map_err(|e| match e {
            UploadError::Client(e) => anyhow::anyhow!("{e}\n({})", not_running(data)),
            other => anyhow::anyhow!("{other}"),
        })?;
    bar.finish_and_clear();
    if answer.status != 201 {
        bail!(
            "the node did not add {} ({}): {}",
            file.display(),
            answer.status,
            answer.body
        );
    }
    let v = answer.json();
    Ok(Added {
        hash: v["hash"].as_str().unwrap_or_default().to_owned(),
        size: v["size"].as_u64().unwrap_or_default(),
        name,
    })
}

/// `popmesh blob add FILE...`: prints `HASH  SIZE  NAME` for each file.
pub fn blob_add(data: &Path, api: Option<SocketAddr>, files: &[PathBuf]) -> Result<Vec<Added>> {
    let client = client(data, api)?;
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let added = add_one(&client, data, file)?;
        println!("{}  {:>12}  {}", added.hash, added.size, added.name);
        out.push(added);
    }
    Ok(out)
}

/// `popmesh blob get HASH --out FILE`: from this node, which fetches it from the site peers if it lacks it.
/// The file is checked against the hash before it takes its name.
pub fn blob_get(data: &Path, api: Option<SocketAddr>, hash: &str, out: &Path) -> Result<u64> {
    if popmesh_node::media::parse_hash(hash).is_none() {
        bail!("HASH {hash:?} is not a BLAKE3 hash (64 lowercase hex digits)");
    }
    let client = client(data, api)?;
    let partial = out.with_extension("popmesh-partial");
    let mut file = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let bar = bar(None, &hash[..12]);
    let mut hasher = blake3::Hasher::new();
    let mut sink = HashingWriter {
        inner: &mut file,
        hasher: &mut hasher,
    };
    let mut sized = false;
    let result = client.download(&format!("/media/{hash}"), &mut sink, &mut |got, len| {
        if !sized && let Some(len) = len {
            sized = true;
            if len >= BAR_FROM_BYTES {
                bar.set_draw_target(ProgressDrawTarget::stderr());
            }
            bar.set_length(len);
        }
        bar.set_position(got);
    });
    bar.finish_and_clear();
    let fail = |e: anyhow::Error| {
        let _ = std::fs::remove_file(&partial);
        e
    };
    let got = match result.map_err(|e| fail(anyhow::anyhow!("{e}\n({})", not_running(data))))? {
        Ok(got) => got,
        Err(answer) => {
            return Err(fail(anyhow::anyhow!(
                "the node could not provide blob {hash} ({}): {}",
                answer.status,
                answer.json()["error"]["message"]
                    .as_str()
                    .unwrap_or(&answer.body)
            )));
        }
    };
    let actual = hasher.finalize().to_hex().to_string();
    if actual != hash {
        return Err(fail(anyhow::anyhow!(
            "the bytes received hash to {actual}, not {hash}; nothing was written to {}",
            out.display()
        )));
    }
    file.sync_all()
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(got)
}

struct HashingWriter<'a> {
    inner: &'a mut std::fs::File,
    hasher: &'a mut blake3::Hasher,
}

impl std::io::Write for HashingWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Parses `--slice ROLE=START-END` (bytes; `k`, `M` and `G` suffixes allowed, such as `kiosk=0-4M`).
pub fn parse_slice(text: &str) -> Result<(String, ByteRange), String> {
    let (role, range) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected ROLE=START-END, such as kiosk=0-4M"))?;
    let (a, b) = range
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected START-END after the role"))?;
    let bytes = |s: &str| -> Result<u64, String> {
        let s = s.trim();
        let (digits, unit) = match s.char_indices().last() {
            Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
            Some((i, 'M')) => (&s[..i], 1 << 20),
            Some((i, 'G')) => (&s[..i], 1 << 30),
            _ => (s, 1),
        };
        digits
            .parse::<u64>()
            .map(|n| n.saturating_mul(unit))
            .map_err(|_| format!("{text:?}: {s:?} is not a byte count"))
    };
    let (start, end) = (bytes(a)?, bytes(b)?);
    if start >= end {
        return Err(format!("{text:?}: the range is empty"));
    }
    Ok((role.trim().to_owned(), ByteRange { start, end }))
}

/// `popmesh manifest publish --name NAME FILE...`: adds the files, then publishes them in the manifest `NAME`.
pub fn manifest_publish(
    data: &Path,
    api: Option<SocketAddr>,
    name: &str,
    files: &[PathBuf],
    fallback: Option<&str>,
    ttl_hours: u64,
    slices: &[(String, ByteRange)],
) -> Result<()> {
    let client = client(data, api)?;
    let mut entries = Vec::with_capacity(files.len());
    for file in files {
        let added = add_one(&client, data, file)?;
        let mime = mime_guess::from_path(file)
            .first_or_octet_stream()
            .essence_str()
            .to_owned();
        println!("{}  {:>12}  {}  {mime}", added.hash, added.size, added.name);
        entries.push(serde_json::json!({
            "name": added.name,
            "hash": added.hash,
            "size": added.size,
            "mime": mime,
            "ttl_ms": ttl_hours.saturating_mul(3_600_000),
        }));
    }
    let mut by_role: std::collections::BTreeMap<&str, Vec<ByteRange>> = Default::default();
    for (role, range) in slices {
        by_role.entry(role).or_default().push(*range);
    }
    let body = serde_json::json!({
        "entries": entries,
        "fallback": fallback,
        "slices": by_role,
    });
    let answer = client
        .post(&format!("/v1/manifests/{name}"), &body)
        .map_err(|e| anyhow::anyhow!("{e}\n({})", not_running(data)))?;
    if answer.status != 201 {
        bail!(
            "the node did not publish manifest {name:?} ({}): {}",
            answer.status,
            answer.json()["error"]["message"]
                .as_str()
                .unwrap_or(&answer.body)
        );
    }
    println!(
        "manifest {name:?} published with {} entries; every device preseeds it as it syncs",
        files.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_read_like_an_operator_writes_them() {
        assert_eq!(
            parse_slice("kiosk=0-4M"),
            Ok((
                "kiosk".into(),
                ByteRange {
                    start: 0,
                    end: 4 << 20
                }
            ))
        );
        assert_eq!(
            parse_slice("pos=1k-2048"),
            Ok((
                "pos".into(),
                ByteRange {
                    start: 1024,
                    end: 2048
                }
            ))
        );
        assert!(parse_slice("kiosk").is_err());
        assert!(parse_slice("kiosk=5-5").is_err());
        assert!(parse_slice("kiosk=a-b").is_err());
    }
}
