//! [`BackupName`]: `attache-20261202T101500Z.sqlite`, the UTC time the snapshot was
//! taken (ISO 8601 basic format, so names sort by time) and the engine it restores
//! into.

use std::fmt;

use chrono::{DateTime, NaiveDateTime, SubsecRound, Utc};

use crate::storage::StorageKey;

/// The database engine a backup was taken from, and so the only one it restores into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    fn extension(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "pgdump",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        })
    }
}

const PREFIX: &str = "attache-";
const STAMP: &str = "%Y%m%dT%H%M%SZ";

/// The name of a backup: what `backup create` prints, `backup list` shows and
/// `backup restore` takes. Ordered by the time it was taken.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BackupName {
    taken: DateTime<Utc>,
    engine: Engine,
}

impl BackupName {
    /// The name of a backup of `engine` taken at `taken` (to the second).
    pub fn new(taken: DateTime<Utc>, engine: Engine) -> Self {
        Self {
            taken: taken.trunc_subsecs(0),
            engine,
        }
    }

    /// A name as printed, with or without its `backups/` folder; `None` for
    /// anything else, so no name can reach outside that folder.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.strip_prefix(StorageKey::BACKUPS).unwrap_or(text);
        let (stamp, extension) = text.strip_prefix(PREFIX)?.rsplit_once('.')?;
        let engine = [Engine::Sqlite, Engine::Postgres]
            .into_iter()
            .find(|engine| engine.extension() == extension)?;
        let taken = NaiveDateTime::parse_from_str(stamp, STAMP).ok()?.and_utc();
        let name = Self::new(taken, engine);
        (name.to_string() == text).then_some(name)
    }

    pub fn taken(&self) -> DateTime<Utc> {
        self.taken
    }

    /// Where this backup is stored: `backups/<name>`.
    pub fn key(&self) -> StorageKey {
        StorageKey::backup(&self.to_string())
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }
}

impl fmt::Display for BackupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{PREFIX}{}.{}",
            self.taken.format(STAMP),
            self.engine.extension()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_by_time() {
        let taken = NaiveDateTime::parse_from_str("20261202T101500Z", STAMP)
            .expect("stamp")
            .and_utc();
        let name = BackupName::new(taken, Engine::Sqlite);
        assert_eq!(name.to_string(), "attache-20261202T101500Z.sqlite");
        assert_eq!(
            BackupName::parse("attache-20261202T101500Z.sqlite"),
            Some(name.clone())
        );
        assert_eq!(
            BackupName::parse("backups/attache-20261202T101500Z.sqlite"),
            Some(name.clone())
        );
        let later = BackupName::new(taken + chrono::Duration::seconds(1), Engine::Postgres);
        assert!(later > name);
        assert!(
            later.to_string() > name.to_string(),
            "the text sorts by time too"
        );
    }

    #[test]
    fn refuses_anything_else() {
        for bad in [
            "attache-20261202T101500Z.tar",
            "attache-20261202T101500Z",
            "attache-20261302T101500Z.sqlite",
            "attache-2026122T101500Z.sqlite",
            "attache-20261202T101500Z.sqlite/../x",
            "../attache-20261202T101500Z.sqlite",
            "backups/../attache-20261202T101500Z.sqlite",
            "other-20261202T101500Z.sqlite",
            "",
        ] {
            assert_eq!(BackupName::parse(bad), None, "{bad}");
        }
    }
}
