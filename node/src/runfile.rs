//! Where a running node is: `DIR/run.json`, written once it has bound its listeners, removed when it stops.
//!
//! `popmesh run --api ADDR` may put the API anywhere; `popmesh status --data DIR` (and `manifest`, `blob`,
//! `rehearse`, `report`, `reconcile`, `site revoke`) then read the address the node really bound from here, not
//! the config's. The file is readable by the node's user only (0600): it says where the API is, and holds the
//! running node's local secret, which the CLI sends as its token (so the CLI works also where the config requires a
//! token on loopback, `[api] loopback_without_token = false`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// What the running node bound.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFile {
    pub pid: u32,
    pub api: SocketAddr,
    /// The site mesh's listen addresses (libp2p multiaddrs), as bound.
    pub mesh: Vec<String>,
    /// The blob endpoint's UDP address.
    pub media: Option<SocketAddr>,
    /// A random secret of this run: `Authorization: Bearer local.<secret>` is an operator's request.
    #[serde(default)]
    pub local_secret: Option<String>,
    /// The API's TLS listener, as bound, and the SHA-256 fingerprint of its certificate.
    #[serde(default)]
    pub tls: Option<SocketAddr>,
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
}

/// Why the run file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct RunFileError {
    pub path: PathBuf,
    pub reason: String,
}

pub fn path(root: &Path) -> PathBuf {
    root.join("run.json")
}

impl RunFile {
    /// Writes the file atomically (a temporary file renamed over it), mode 0600.
    pub fn write(&self, root: &Path) -> Result<(), RunFileError> {
        let target = path(root);
        let err = |e: &dyn std::fmt::Display| RunFileError {
            path: target.clone(),
            reason: e.to_string(),
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| err(&e))?;
        let tmp = root.join("run.json.tmp");
        {
            use std::io::Write as _;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                options.mode(0o600);
            }
            let mut file = options.open(&tmp).map_err(|e| err(&e))?;
            file.write_all(text.as_bytes()).map_err(|e| err(&e))?;
            file.sync_all().map_err(|e| err(&e))?;
        }
        std::fs::rename(&tmp, &target).map_err(|e| err(&e))
    }

    /// The run file of a node that is still running (its process exists), if any.
    pub fn read_live(root: &Path) -> Option<Self> {
        let text = std::fs::read_to_string(path(root)).ok()?;
        let file: Self = serde_json::from_str(&text).ok()?;
        let alive =
            Path::new("/proc").join(file.pid.to_string()).exists() || !Path::new("/proc").exists();
        alive.then_some(file)
    }

    /// Removes the file if it is this process's.
    pub fn remove(root: &Path) {
        if Self::read_live(root).is_some_and(|f| f.pid == std::process::id()) {
            let _ = std::fs::remove_file(path(root));
        }
    }
}

/// The token the CLI sends to the node running on `root`: its local secret, if it is running.
pub fn local_token(root: &Path) -> Option<String> {
    RunFile::read_live(root)?
        .local_secret
        .map(|s| format!("{LOCAL_TOKEN_PREFIX}{s}"))
}

/// How a local secret is sent as a bearer token.
pub const LOCAL_TOKEN_PREFIX: &str = "local.";

/// The API address the CLI talks to: `--api`, else the one the running node bound, else the config's.
pub fn api_addr(root: &Path, flag: Option<SocketAddr>, configured: SocketAddr) -> SocketAddr {
    flag.or_else(|| RunFile::read_live(root).map(|f| f.api))
        .unwrap_or(configured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cli_finds_the_address_the_running_node_bound() {
        let dir = std::env::temp_dir().join(format!("popmesh-runfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let configured: SocketAddr = "127.0.0.1:7700".parse().expect("addr");
        assert_eq!(api_addr(&dir, None, configured), configured);
        let run = RunFile {
            pid: std::process::id(),
            api: "127.0.0.1:7799".parse().expect("addr"),
            mesh: vec!["/ip4/127.0.0.1/tcp/4799".into()],
            media: None,
            local_secret: Some("ab".into()),
            tls: None,
            tls_fingerprint: None,
        };
        run.write(&dir).expect("write");
        assert_eq!(local_token(&dir).as_deref(), Some("local.ab"));
        assert_eq!(api_addr(&dir, None, configured), run.api);
        let flag: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert_eq!(api_addr(&dir, Some(flag), configured), flag);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path(&dir))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        RunFile::remove(&dir);
        assert_eq!(api_addr(&dir, None, configured), configured);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
