//! The schema: applying the migrations (`healthprobe migrate`, `run`), and checking that a
//! database migrated by someone else is the one this binary needs (`run --no-migrate`).
//!
//! Migrations create only healthprobe's own tables (DESIGN §16). Up to 0.5.0 the first one
//! also created the runtime manager's `runtime_records` when absent, and the second read it;
//! both files changed in 0.6.0, so their checksums differ from the ones sqlx recorded in
//! databases migrated then. Those databases are right as they are (the table stays, owned by
//! whoever created it), so [`Store::migrate`] replaces exactly the recorded 0.5.0 checksums
//! by the new ones before sqlx compares them, and [`Store::check_schema`] accepts either.

use super::{MIGRATOR, Store};

/// sqlx's bookkeeping table.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// (version, SHA-384 of the file as 0.5.0 shipped it), for the migrations edited since.
/// `tests/fixtures/migrations-0.5.0/` holds those files; a test checks these values.
pub const EDITED_MIGRATIONS: [(i64, &str); 2] = [
    (
        20261121000001,
        "e015fd7a6179e42571d7e7fbf06ea172a51b9d4ec32332f61cc9cd4e103b47850f07a15135967de2a99e17c1cf55f1dd",
    ),
    (
        20261121000002,
        "524a078176ffb59ee344f309b469f9d61c96fe751f3efacb5a4821372078beff0e9404d32754be5667eeed1b1c6f00cc",
    ),
];

/// Why a database is not ready for this binary without migrating.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "the database has no healthprobe schema (no {MIGRATIONS_TABLE} table): run `healthprobe migrate` first, as a role that may create tables"
    )]
    Missing,
    #[error(
        "the schema is older than this binary: {} not applied; run `healthprobe migrate` first, as a role that may create tables",
        describe(.missing)
    )]
    Older { missing: Vec<(i64, String)> },
    #[error(
        "migration {version} is recorded as failed (a migration stopped half-way): fix it, then run `healthprobe migrate`"
    )]
    Failed { version: i64 },
    #[error(
        "migration {version} was applied from a different file than this binary's (checksum mismatch): this binary does not belong to this database"
    )]
    Modified { version: i64 },
    #[error("reading {MIGRATIONS_TABLE} (the worker's role needs SELECT on it)")]
    Database(#[from] sqlx::Error),
}

fn describe(missing: &[(i64, String)]) -> String {
    let names: Vec<String> = missing
        .iter()
        .map(|(version, description)| format!("{version} ({description})"))
        .collect();
    match names.len() {
        1 => format!("migration {}", names[0]),
        _ => format!("migrations {}", names.join(", ")),
    }
}

/// What [`Store::check_schema`] found on a usable database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaCheck {
    /// Migrations applied by a newer binary (e.g. during a rolling deploy): this one runs,
    /// and says so.
    pub newer: Vec<i64>,
}

/// A row of sqlx's bookkeeping table, as far as the check reads it.
#[derive(sqlx::FromRow)]
struct AppliedMigration {
    version: i64,
    success: bool,
    checksum: Vec<u8>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Store {
    /// Applies pending migrations; a no-op when all are applied. Needs a role that may
    /// create tables (the schema's owner), unlike `run --no-migrate`.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        self.accept_edited_migrations().await?;
        MIGRATOR.run(&self.pool).await
    }

    /// Replaces the 0.5.0 checksums of the edited migrations by the current ones, only
    /// where exactly those old values are recorded.
    async fn accept_edited_migrations(&self) -> Result<(), sqlx::Error> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(MIGRATIONS_TABLE)
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(());
        }
        for (version, old) in EDITED_MIGRATIONS {
            let Some(current) = MIGRATOR.iter().find(|m| m.version == version) else {
                continue;
            };
            let updated = sqlx::query(
                "UPDATE _sqlx_migrations SET checksum = $3 \
                 WHERE version = $1 AND encode(checksum, 'hex') = $2",
            )
            .bind(version)
            .bind(old)
            .bind(current.checksum.as_ref())
            .execute(&self.pool)
            .await?;
            if updated.rows_affected() > 0 {
                tracing::info!(
                    version,
                    "migration applied by 0.5.0 or earlier: its recorded checksum is updated to this version's file (the runtime manager's table is no longer created here, and is left as it is)"
                );
            }
        }
        Ok(())
    }

    /// Checks, without changing anything, that every migration of this binary is applied:
    /// what `run --no-migrate` does instead of migrating. Needs only `SELECT` on
    /// `_sqlx_migrations`.
    pub async fn check_schema(&self) -> Result<SchemaCheck, SchemaError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(MIGRATIONS_TABLE)
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Err(SchemaError::Missing);
        }
        let rows: Vec<AppliedMigration> =
            sqlx::query_as("SELECT version, success, checksum FROM _sqlx_migrations")
                .fetch_all(&self.pool)
                .await?;
        let mut applied = std::collections::HashMap::new();
        for AppliedMigration {
            version,
            success,
            checksum,
        } in rows
        {
            if !success {
                return Err(SchemaError::Failed { version });
            }
            applied.insert(version, checksum);
        }
        let mut missing = Vec::new();
        for migration in MIGRATOR.iter() {
            match applied.get(&migration.version) {
                None => missing.push((migration.version, migration.description.to_string())),
                Some(checksum) if checksum.as_slice() == migration.checksum.as_ref() => {}
                Some(checksum) => {
                    let old = EDITED_MIGRATIONS
                        .iter()
                        .any(|(v, old)| *v == migration.version && hex(checksum) == *old);
                    if !old {
                        return Err(SchemaError::Modified {
                            version: migration.version,
                        });
                    }
                }
            }
        }
        if missing.len() == MIGRATOR.iter().count() {
            return Err(SchemaError::Missing);
        }
        if !missing.is_empty() {
            return Err(SchemaError::Older { missing });
        }
        let mut newer: Vec<i64> = applied
            .keys()
            .copied()
            .filter(|v| !MIGRATOR.iter().any(|m| m.version == *v))
            .collect();
        newer.sort_unstable();
        Ok(SchemaCheck { newer })
    }
}
