//! A device's data directory: its keys, what it knows of its site, its configuration and its data file.
//!
//! ```text
//! DIR/popmesh.toml          configuration (see config.rs); edited by hand, flags override it
//! DIR/site.json             site name and id, the authority's public key, this device's certificate
//! DIR/keys/device.key       this device's ed25519 seed (hex, mode 0600): libp2p, iroh and receipt signatures
//! DIR/keys/network.key      the site's pre-shared network key (hex, 0600)
//! DIR/keys/authority.key    the site authority's seed, only on the device that ran `site init` (hex, 0600)
//! DIR/store.redb            documents and node metadata (store.rs)
//! ```
//!
//! Every error names the file and, where it applies, the field.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use popmesh_crdt::enrollment::{EnrollmentCert, SiteAuthority};
use popmesh_crdt::identity::hex_decode;
use popmesh_crdt::{DeviceId, PublicKey, Role, SecretKey, SiteId};
use serde::{Deserialize, Serialize};

/// Why a data directory could not be read or written. Every message names the file and, where it applies, the
/// field.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error(
        "{} holds no popmesh device (no {}); create one with `popmesh site init --data {}` or `popmesh join TOKEN --data {}`",
        root.display(), DataDir::site_path(root).display(), root.display(), root.display()
    )]
    NoDevice { root: PathBuf },
    #[error("{} already holds a device ({} exists); choose another --data directory", root.display(), DataDir::site_path(root).display())]
    Exists { root: PathBuf },
    #[error(
        "{} does not hold the site authority key ({} is missing): run this on the device that ran `popmesh site init`",
        root.display(), path.display()
    )]
    NoAuthority { root: PathBuf, path: PathBuf },
    #[error("{doing} {}: {reason}", path.display())]
    Io {
        doing: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("no OS randomness: {0}")]
    Randomness(String),
}

type Result<T, E = SiteError> = std::result::Result<T, E>;

fn io<'a>(doing: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SiteError + 'a {
    move |e| SiteError::Io {
        doing,
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> SiteError {
    SiteError::Invalid {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// What `site.json` says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SiteFile {
    pub site_name: String,
    pub site_id: String,
    /// The site authority's public key (hex).
    pub authority: String,
    pub device_name: String,
    pub role: Role,
    /// This device's enrollment certificate (canonical bytes, base64).
    pub cert: String,
    /// The site directory's document id, known at once to the device that created the site.
    pub directory: Option<String>,
}

/// A loaded data directory.
#[derive(Debug)]
pub struct DataDir {
    pub root: PathBuf,
    pub site: SiteFile,
    pub key: SecretKey,
    pub network_key: [u8; 32],
    pub authority: PublicKey,
    pub cert: EnrollmentCert,
}

impl DataDir {
    pub fn site_path(root: &Path) -> PathBuf {
        root.join("site.json")
    }
    pub fn config_path(root: &Path) -> PathBuf {
        root.join("popmesh.toml")
    }
    pub fn store_path(root: &Path) -> PathBuf {
        root.join("store.redb")
    }
    fn key_path(root: &Path, name: &str) -> PathBuf {
        root.join("keys").join(format!("{name}.key"))
    }

    /// Whether `root` already holds a device.
    pub fn exists(root: &Path) -> bool {
        Self::site_path(root).exists()
    }

    /// Loads and checks a data directory.
    pub fn load(root: &Path) -> Result<Self> {
        let site_path = Self::site_path(root);
        if !site_path.exists() {
            return Err(SiteError::NoDevice {
                root: root.to_owned(),
            });
        }
        let text = std::fs::read_to_string(&site_path).map_err(io("reading", &site_path))?;
        let site: SiteFile = serde_json::from_str(&text)
            .map_err(|e| invalid(&site_path, format!("not a valid site file: {e}")))?;
        let key = SecretKey::from_seed(read_key(&Self::key_path(root, "device"))?);
        let network_key = read_key(&Self::key_path(root, "network"))?;
        let authority = DeviceId::from_hex(&site.authority)
            .map_err(|e| invalid(&site_path, format!("field `authority`: {e}")))?;
        let cert_bytes = B64
            .decode(&site.cert)
            .map_err(|e| invalid(&site_path, format!("field `cert` is not base64: {e}")))?;
        let cert = EnrollmentCert::from_bytes(&cert_bytes)
            .map_err(|e| invalid(&site_path, format!("field `cert`: {e}")))?;
        if cert.device != key.public() {
            return Err(invalid(
                &site_path,
                format!(
                    "field `cert` is for device {}, but {} holds device {}",
                    cert.device.short(),
                    Self::key_path(root, "device").display(),
                    key.public().short()
                ),
            ));
        }
        Ok(Self {
            root: root.to_owned(),
            site,
            key,
            network_key,
            authority,
            cert,
        })
    }

    /// The site authority, on the device that holds its key.
    pub fn authority_key(&self) -> Result<SiteAuthority> {
        let path = Self::key_path(&self.root, "authority");
        if !path.exists() {
            return Err(SiteError::NoAuthority {
                root: self.root.clone(),
                path,
            });
        }
        Ok(SiteAuthority::new(SecretKey::from_seed(read_key(&path)?)))
    }

    pub fn site_id(&self) -> SiteId {
        SiteId::for_authority(&self.authority)
    }

    pub fn device(&self) -> DeviceId {
        self.key.public()
    }

    /// Refuses a directory that already holds a device.
    pub fn ensure_new(root: &Path) -> Result<()> {
        if Self::exists(root) {
            return Err(SiteError::Exists {
                root: root.to_owned(),
            });
        }
        Ok(())
    }

    /// Writes a new device's files. Refuses to overwrite an existing device.
    pub fn create(
        root: &Path,
        site: &SiteFile,
        key: &SecretKey,
        network_key: &[u8; 32],
        authority: Option<&SiteAuthority>,
    ) -> Result<()> {
        Self::ensure_new(root)?;
        let keys = root.join("keys");
        std::fs::create_dir_all(&keys).map_err(io("creating", &keys))?;
        write_key(&Self::key_path(root, "device"), &key.seed())?;
        write_key(&Self::key_path(root, "network"), network_key)?;
        if let Some(a) = authority {
            write_key(&Self::key_path(root, "authority"), &a.secret().seed())?;
        }
        Self::save_site(root, site)
    }

    pub fn save_site(root: &Path, site: &SiteFile) -> Result<()> {
        let path = Self::site_path(root);
        let text = serde_json::to_string_pretty(site).map_err(|e| invalid(&path, e))?;
        write_atomic(&path, text.as_bytes(), false)
    }

    pub fn encode_cert(cert: &EnrollmentCert) -> String {
        B64.encode(cert.to_bytes())
    }
}

fn read_key(path: &Path) -> Result<[u8; 32]> {
    let text = std::fs::read_to_string(path).map_err(io("reading", path))?;
    hex_decode::<32>(text.trim()).map_err(|e| {
        invalid(
            path,
            format!("must hold 64 hex digits (a 32-byte key): {e}"),
        )
    })
}

fn write_key(path: &Path, key: &[u8; 32]) -> Result<()> {
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    write_atomic(path, format!("{hex}\n").as_bytes(), true)
}

/// Writes a file via a temporary sibling and a rename, fsync'd, so a crash leaves the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> Result<()> {
    use std::io::Write as _;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut file = options.open(&tmp).map_err(io("writing", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("writing", path))?;
    Ok(())
}

/// 32 bytes from the OS.
pub fn random_seed() -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    getrandom::fill(&mut out).map_err(|e| SiteError::Randomness(e.to_string()))?;
    Ok(out)
}
