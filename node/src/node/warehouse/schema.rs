//! The warehouse's versioned schema: the SQL files in `node/migrations/`, applied in order by
//! `popmesh warehouse migrate`, each recorded (with a checksum of its text) in `popmesh_migrations`.

use tokio_postgres::Client;

use super::WarehouseError;

/// One migration: its version, name and SQL.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. The sink needs the last one applied.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "show_data",
        sql: include_str!("../../../migrations/0001_show_data.sql"),
    },
    Migration {
        version: 2,
        name: "report_views",
        sql: include_str!("../../../migrations/0002_report_views.sql"),
    },
];

/// The schema version this popmesh writes.
pub fn needed() -> i32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

fn checksum(sql: &str) -> String {
    blake3::hash(sql.as_bytes()).to_hex()[..32].to_owned()
}

/// Serializes migrations of several origins (any 64-bit number popmesh alone uses).
const MIGRATION_LOCK: i64 = 0x706f_706d_6573_6801;

const LEDGER: &str = "CREATE TABLE IF NOT EXISTS popmesh_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Applies every migration not applied yet, in one transaction under an advisory lock (several origins may run
/// this at once). Refuses when an applied migration's text has changed since. Returns the versions applied now.
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, WarehouseError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute(LEDGER).await?;
    let applied: Vec<(i32, String)> = tx
        .query("SELECT version, checksum FROM popmesh_migrations", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut now = Vec::new();
    for m in MIGRATIONS {
        match applied.iter().find(|(v, _)| *v == m.version) {
            Some((_, sum)) if *sum == checksum(m.sql) => {}
            Some(_) => {
                return Err(WarehouseError::MigrationChanged {
                    version: m.version,
                    name: m.name,
                });
            }
            None => {
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    "INSERT INTO popmesh_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    &[&m.version, &m.name, &checksum(m.sql)],
                )
                .await?;
                now.push(m.version);
            }
        }
    }
    tx.commit().await?;
    Ok(now)
}

/// The versions applied to the database (none when it was never migrated).
pub async fn applied(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Vec<i32>, WarehouseError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('popmesh_migrations') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(Vec::new());
    }
    Ok(client
        .query(
            "SELECT version FROM popmesh_migrations ORDER BY version",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Fails unless every migration this popmesh knows is applied.
pub async fn check(client: &impl tokio_postgres::GenericClient) -> Result<(), WarehouseError> {
    let found = applied(client).await?.last().copied().unwrap_or(0);
    if found < needed() {
        return Err(WarehouseError::Schema {
            found,
            needed: needed(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_from_one_without_gaps_and_name_their_files() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version, i as i32 + 1, "{}", m.name);
            assert!(m.sql.contains("popmesh warehouse, version"), "{}", m.name);
        }
        assert_eq!(needed(), MIGRATIONS.len() as i32);
    }
}
