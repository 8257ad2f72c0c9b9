//! A throwaway PostgreSQL cluster for the warehouse tests and bench: `initdb` in a temporary directory, the server
//! on a unix socket there (no TCP port), stopped and removed when dropped. The server refuses to run as root, so
//! as root it runs as the `postgres` OS user (`runuser`); as anyone else, as that user. Without the binaries (or a
//! way to become `postgres`), [`Pg::start`] says `SKIPPED: needs PostgreSQL (.ci/run installs it)` and returns
//! none.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A running throwaway cluster with one database, `popmesh`.
pub struct Pg {
    dir: PathBuf,
    bin: PathBuf,
    /// Run the server's commands through `runuser -u postgres --`.
    as_postgres: bool,
    pub running: bool,
}

fn bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("POPMESH_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    // Debian: /usr/lib/postgresql/<major>/bin; the newest major wins.
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return Some(bin);
    }
    let which = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&which.stdout).trim().to_owned();
    (!path.is_empty())
        .then(|| Path::new(&path).parent().map(Path::to_path_buf))
        .flatten()
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

impl Pg {
    /// Starts a cluster (fsync off: the tests stop the server, they do not crash the machine).
    pub fn start(label: &str) -> Option<Self> {
        Self::start_with(label, &["-c", "fsync=off"])
    }

    /// Starts a cluster with extra server settings (`-c name=value` pairs).
    pub fn start_with(label: &str, settings: &[&str]) -> Option<Self> {
        let skip = |why: &str| {
            super::site::skipped(&format!("needs PostgreSQL (.ci/run installs it): {why}"));
            None
        };
        let Some(bin) = bin_dir() else {
            return skip("no initdb or pg_ctl found (set POPMESH_PG_BIN to their directory)");
        };
        let as_postgres = is_root();
        if as_postgres {
            let ok = Command::new("runuser")
                .args(["-u", "postgres", "--", "true"])
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return skip("running as root, and `runuser -u postgres` does not work");
            }
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "popmesh-pg-{label}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster dir");
        let mut pg = Self {
            dir,
            bin,
            as_postgres,
            running: false,
        };
        if as_postgres {
            let owned = Command::new("chown")
                .args(["postgres:postgres", pg.dir.to_str().expect("utf-8")])
                .status()
                .is_ok_and(|s| s.success());
            assert!(owned, "chown of {} to postgres", pg.dir.display());
        }
        let data = pg.data();
        let (ok, out) = pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
        );
        assert!(ok, "initdb failed: {out}");
        let mut options = format!("-k {} -c listen_addresses='' -p 5432", pg.dir.display());
        for s in settings {
            options.push(' ');
            options.push_str(s);
        }
        std::fs::write(pg.dir.join("options"), &options).expect("options");
        pg.start_again();
        pg.admin("CREATE DATABASE popmesh");
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.join("data").to_str().expect("utf-8").to_owned()
    }

    /// Runs one of the server's programs, as `postgres` when this is root.
    fn run(&self, program: &str, args: &[&str]) -> (bool, String) {
        let path = self.bin.join(program);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let out = cmd
            .args(args)
            .current_dir(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("{program} runs: {e}"));
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// The URL the origin's `[warehouse] postgres_url` takes.
    pub fn url(&self) -> String {
        format!(
            "host={} port=5432 user=postgres dbname=popmesh",
            self.dir.display()
        )
    }

    /// Starts the server (again).
    pub fn start_again(&mut self) {
        let options = std::fs::read_to_string(self.dir.join("options")).expect("options");
        let log = self.dir.join("server.log");
        let (ok, out) = self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                log.to_str().expect("utf-8"),
                "-w",
                "-t",
                "60",
                "-o",
                &options,
                "start",
            ],
        );
        assert!(
            ok,
            "pg_ctl start failed: {out}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        self.running = true;
    }

    /// Stops the server the way an operator does (`pg_ctl stop -m fast`: sessions are cut, nothing committed is
    /// lost).
    pub fn stop(&mut self) {
        let (ok, out) = self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
        assert!(ok, "pg_ctl stop failed: {out}");
        self.running = false;
    }

    fn block<T>(&self, db: &str, f: impl AsyncFnOnce(tokio_postgres::Client) -> T) -> T {
        let url = format!(
            "host={} port=5432 user=postgres dbname={db}",
            self.dir.display()
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap_or_else(|e| panic!("connect to the test database: {e}"));
            tokio::spawn(connection);
            f(client).await
        })
    }

    fn admin(&self, sql: &str) {
        let sql = sql.to_owned();
        self.block("postgres", async move |c| {
            c.batch_execute(&sql).await.expect("admin statement");
        });
    }

    /// Runs statements in the `popmesh` database.
    pub fn exec(&self, sql: &str) {
        let sql = sql.to_owned();
        self.block("popmesh", async move |c| {
            c.batch_execute(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
        });
    }

    /// The rows of a query, each a JSON object by column name.
    pub fn rows(&self, sql: &str) -> Vec<Value> {
        let wrapped = format!("SELECT coalesce(json_agg(t), '[]'::json)::text FROM ({sql}) t");
        let text: String = self.block("popmesh", async move |c| {
            c.query_one(&wrapped, &[])
                .await
                .unwrap_or_else(|e| panic!("{wrapped}: {e:?}"))
                .get(0)
        });
        match serde_json::from_str(&text).expect("json rows") {
            Value::Array(rows) => rows,
            other => panic!("not rows: {other}"),
        }
    }

    /// One number from a query such as `SELECT count(*) FROM receipts`.
    pub fn count(&self, sql: &str) -> i64 {
        let rows = self.rows(sql);
        let row = rows.first().and_then(Value::as_object).expect("one row");
        row.values()
            .next()
            .and_then(Value::as_i64)
            .unwrap_or_else(|| panic!("{sql} gave {row:?}, not a number"))
    }

    /// Waits until `cond` holds (polling every 200 ms), or panics after `limit`.
    pub fn wait_for(&self, what: &str, limit: Duration, mut cond: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("waited {limit:?} for {what} in the warehouse");
    }
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running {
            let _ = self.run(
                "pg_ctl",
                &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
