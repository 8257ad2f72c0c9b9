//! A small blocking HTTP/1.1 client for the node's local API: what `popmesh status` and `popmesh site revoke`
//! use, and what the scenario tests drive nodes with. Loopback JSON only; one request per connection.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// An answer from the API.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no popmesh node answers at {addr}: {source}")]
    Unreachable {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the node at {addr} sent a malformed answer: {reason}")]
    Malformed { addr: SocketAddr, reason: String },
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("reading {}: {source}", path.display())]
    File {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] ClientError),
}

#[derive(Debug, Clone)]
pub struct Client {
    pub addr: SocketAddr,
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer ...`: a client token, or the running node's local secret (`run.json`).
    pub token: Option<String>,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            timeout: Duration::from_secs(30),
            token: None,
        }
    }

    /// The `Authorization` header line for this client's token, if it has one.
    fn auth(&self) -> String {
        match &self.token {
            Some(t) => format!("Authorization: Bearer {t}\r\n"),
            None => String::new(),
        }
    }

    pub fn get(&self, path: &str) -> Result<Answer, ClientError> {
        self.request("GET", path, None)
    }

    pub fn post(&self, path: &str, body: &serde_json::Value) -> Result<Answer, ClientError> {
        self.request("POST", path, Some(body.to_string().as_bytes()))
    }

    pub fn put(&self, path: &str, body: &serde_json::Value) -> Result<Answer, ClientError> {
        self.request("PUT", path, Some(body.to_string().as_bytes()))
    }

    /// Sends raw bytes as a JSON body (for tests of malformed input).
    pub fn post_raw(&self, path: &str, body: &[u8]) -> Result<Answer, ClientError> {
        self.request("POST", path, Some(body))
    }

    /// Sends the file at `file` as the raw body of a POST, calling `progress` with the bytes sent so far.
    pub fn upload(
        &self,
        path: &str,
        file: &std::path::Path,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Answer, UploadError> {
        let mut source = std::fs::File::open(file).map_err(|e| UploadError::File {
            path: file.into(),
            source: e,
        })?;
        let len = source
            .metadata()
            .map_err(|e| UploadError::File {
                path: file.into(),
                source: e,
            })?
            .len();
        let mut stream = self.connect()?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n{}Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n",
            self.addr,
            self.auth()
        );
        let unreachable = |source| ClientError::Unreachable {
            addr: self.addr,
            source,
        };
        stream.write_all(head.as_bytes()).map_err(unreachable)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut sent = 0u64;
        loop {
            let n = source.read(&mut buf).map_err(|e| UploadError::File {
                path: file.into(),
                source: e,
            })?;
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).map_err(unreachable)?;
            sent += n as u64;
            progress(sent);
        }
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(unreachable)?;
        Ok(self.parse(&raw)?)
    }

    /// GETs `path` and streams a successful body into `sink`, calling `progress` with (bytes so far, length).
    /// An error answer is returned whole instead.
    pub fn download(
        &self,
        path: &str,
        sink: &mut dyn std::io::Write,
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<Result<u64, Answer>, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            addr: self.addr,
            source,
        };
        let mut stream = self.connect()?;
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{}\r\n",
            self.addr,
            self.auth()
        );
        stream.write_all(head.as_bytes()).map_err(unreachable)?;
        let mut reader = std::io::BufReader::with_capacity(256 * 1024, stream);
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut line = Vec::new();
            let n =
                std::io::BufRead::read_until(&mut reader, b'\n', &mut line).map_err(unreachable)?;
            if n == 0 || head.len() > 64 * 1024 {
                return Err(ClientError::Malformed {
                    addr: self.addr,
                    reason: "the answer ended inside its headers".into(),
                });
            }
            head.extend_from_slice(&line);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .unwrap_or(0);
        let length = text.lines().find_map(|l| {
            l.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<u64>().ok())
        });
        if !(200..300).contains(&status) {
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).map_err(unreachable)?;
            head.extend_from_slice(&rest);
            return Ok(Err(self.parse(&head)?));
        }
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        loop {
            let n = reader.read(&mut buf).map_err(unreachable)?;
            if n == 0 {
                break;
            }
            sink.write_all(&buf[..n]).map_err(unreachable)?;
            got += n as u64;
            progress(got, length);
        }
        if length.is_some_and(|l| l != got) {
            return Err(ClientError::Malformed {
                addr: self.addr,
                reason: format!(
                    "the body ended after {got} of {} bytes",
                    length.unwrap_or(0)
                ),
            });
        }
        Ok(Ok(got))
    }

    fn connect(&self) -> Result<TcpStream, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            addr: self.addr,
            source,
        };
        let stream = TcpStream::connect_timeout(&self.addr, self.timeout).map_err(unreachable)?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(unreachable)?;
        Ok(stream)
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> Result<Answer, ClientError> {
        let unreachable = |source| ClientError::Unreachable {
            addr: self.addr,
            source,
        };
        let mut stream = self.connect()?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nAccept: application/json\r\n{}",
            self.addr,
            self.auth()
        );
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        out.extend_from_slice(body.unwrap_or_default());
        stream.write_all(&out).map_err(unreachable)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(unreachable)?;
        self.parse(&raw)
    }

    fn parse(&self, raw: &[u8]) -> Result<Answer, ClientError> {
        let malformed = |reason: &str| ClientError::Malformed {
            addr: self.addr,
            reason: reason.to_owned(),
        };
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| malformed("no end of headers"))?;
        let head =
            std::str::from_utf8(&raw[..split]).map_err(|_| malformed("headers are not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| malformed("no status line"))?;
        let chunked = lines.any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let mut body = raw[split + 4..].to_vec();
        if chunked {
            body = dechunk(&body).ok_or_else(|| malformed("bad chunked body"))?;
        }
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}
