//! Collections (SPEC 3): what an `ownerType` is, where its files go, how large they
//! may be and which types it accepts. Built in, or replaced by `COLLECTIONS_FILE`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::config::{ConfigError, MOST_FILE_BYTES};
use crate::media::MediaType;
use crate::storage::KeyTemplate;

const MIB: u64 = 1024 * 1024;

#[derive(Clone, Debug)]
pub struct Collection {
    pub key: KeyTemplate,
    pub max_bytes: u64,
    pub accept: Vec<MediaType>,
}

#[derive(Clone, Debug)]
pub struct Collections {
    by_owner_type: BTreeMap<String, Collection>,
}

/// One table of the TOML file: `[contract]` with `key`, `max_bytes`, `accept`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectionFile {
    key: String,
    max_bytes: u64,
    accept: Vec<MediaType>,
}

impl Collections {
    pub fn built_in() -> Self {
        let documents = MediaType::ALL.to_vec();
        let table = [
            (
                "contract",
                "{tenant}/contracts/{owner}/{id}{ext}",
                10 * MIB,
                documents.clone(),
            ),
            (
                "customer",
                "{tenant}/customers/{owner}/{id}{ext}",
                10 * MIB,
                documents,
            ),
            (
                "invoice_logo",
                "{tenant}/invoices/logos/{id}{ext}",
                2 * MIB,
                vec![MediaType::Png, MediaType::Jpeg, MediaType::Webp],
            ),
            (
                "invoice_reference",
                "{tenant}/invoices/references/{id}{ext}",
                10 * MIB,
                vec![MediaType::Pdf],
            ),
        ];
        let by_owner_type = table
            .into_iter()
            .map(|(name, key, max_bytes, accept)| {
                let key =
                    KeyTemplate::parse(key).unwrap_or_else(|err| panic!("built-in {name}: {err}"));
                (
                    name.to_owned(),
                    Collection {
                        key,
                        max_bytes,
                        accept,
                    },
                )
            })
            .collect();
        Self { by_owner_type }
    }

    /// The built-in collections, or those of `COLLECTIONS_FILE` when it is set.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let Some(path) = file else {
            return Ok(Self::built_in());
        };
        let fail = |message: String| ConfigError::new("COLLECTIONS_FILE", message);
        let text = std::fs::read_to_string(path)
            .map_err(|err| fail(format!("cannot read {}: {err}", path.display())))?;
        let tables: BTreeMap<String, CollectionFile> = toml::from_str(&text).map_err(|err| {
            // Where, as line:column (the error's own text spans several lines).
            let at = err.span().map_or(String::new(), |span| {
                let before = text.get(..span.start).unwrap_or(&text);
                let line = before.matches('\n').count() + 1;
                let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
                format!(" at line {line}, column {column}")
            });
            fail(format!("invalid TOML{at}: {}", err.message()))
        })?;
        if tables.is_empty() {
            return Err(fail("defines no collection".into()));
        }
        let mut by_owner_type = BTreeMap::new();
        for (name, table) in tables {
            if crate::ids::SafeId::parse(&name).is_none() {
                return Err(fail(format!(
                    "collection name `{name}` must match [A-Za-z0-9_-]{{1,64}}"
                )));
            }
            let key = KeyTemplate::parse(&table.key)
                .map_err(|err| fail(format!("[{name}] key {err}")))?;
            if table.max_bytes == 0 || table.accept.is_empty() {
                return Err(fail(format!(
                    "[{name}] needs max_bytes > 0 and at least one accepted type"
                )));
            }
            if table.max_bytes > MOST_FILE_BYTES {
                return Err(fail(format!(
                    "[{name}] max_bytes is at most {MOST_FILE_BYTES} (2 GiB - 1): `byteSize` \
                     is a GraphQL Int"
                )));
            }
            by_owner_type.insert(
                name,
                Collection {
                    key,
                    max_bytes: table.max_bytes,
                    accept: table.accept,
                },
            );
        }
        Ok(Self { by_owner_type })
    }

    pub fn get(&self, owner_type: &str) -> Option<&Collection> {
        self.by_owner_type.get(owner_type)
    }

    /// The owner types, for an error that says which exist.
    pub fn owner_types(&self) -> Vec<&str> {
        self.by_owner_type.keys().map(String::as_str).collect()
    }

    /// Whether some collection's layout could have made `key`: what `storage sweep`
    /// may consider, so that nothing else in the store (backups, probes) is touched.
    pub fn covers(&self, key: &str) -> bool {
        self.by_owner_type
            .values()
            .any(|collection| collection.key.matches(key))
    }
}
