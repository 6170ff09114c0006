//! [`StorageKey`] is the only place that builds object keys; [`KeyTemplate`] is a
//! collection's layout, checked when it is loaded so no key can escape its tenant.

use std::fmt;

use uuid::Uuid;

use crate::ids::SafeId;
use crate::media::MediaType;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(String),
    Tenant,
    Owner,
    Id,
    Ext,
}

/// A parsed key template such as `{tenant}/contracts/{owner}/{id}{ext}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTemplate {
    parts: Vec<Part>,
}

impl KeyTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        if !template.starts_with("{tenant}/") {
            return Err(
                "must start with `{tenant}/`, so that each tenant's files stay apart".into(),
            );
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('{') {
                let end = after.find('}').ok_or("has an unclosed `{`")?;
                parts.push(match &after[..end] {
                    "tenant" => Part::Tenant,
                    "owner" => Part::Owner,
                    "id" => Part::Id,
                    "ext" => Part::Ext,
                    other => return Err(format!("has an unknown placeholder `{{{other}}}`")),
                });
                rest = &after[end + 1..];
            } else {
                let end = rest.find('{').unwrap_or(rest.len());
                let literal = &rest[..end];
                let safe = literal
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'/' | b'.'));
                if !safe || literal.contains("..") || literal.contains("//") {
                    return Err(format!("has an unsafe literal `{literal}`"));
                }
                parts.push(Part::Literal(literal.to_owned()));
                rest = &rest[end..];
            }
        }
        if !parts.contains(&Part::Id) {
            return Err("must contain `{id}`, so that keys never collide".into());
        }
        if template.ends_with('/') {
            return Err("must not end with `/`".into());
        }
        let longest: usize = parts
            .iter()
            .map(|part| match part {
                Part::Literal(text) => text.len(),
                Part::Tenant | Part::Owner => SafeId::MAX_LEN,
                Part::Id => 36,
                Part::Ext => MediaType::ALL
                    .iter()
                    .map(|media| media.extension().len())
                    .max()
                    .unwrap_or_default(),
            })
            .sum();
        if longest > StorageKey::MAX_LEN {
            return Err(format!(
                "makes keys of up to {longest} bytes (64 for each `{{tenant}}` and `{{owner}}`), \
                 past the {} that a key may have: shorten it",
                StorageKey::MAX_LEN
            ));
        }
        Ok(Self { parts })
    }

    /// Whether `key` has exactly this layout: safe ids where the tenant and owner go,
    /// a UUID for `{id}`, a canonical extension for `{ext}`.
    pub fn matches(&self, key: &str) -> bool {
        fn rest(parts: &[Part], key: &str) -> bool {
            let Some((part, tail)) = parts.split_first() else {
                return key.is_empty();
            };
            match part {
                Part::Literal(text) => key
                    .strip_prefix(text.as_str())
                    .is_some_and(|key| rest(tail, key)),
                Part::Tenant | Part::Owner => (1..=SafeId::MAX_LEN.min(key.len())).any(|len| {
                    let parse = match part {
                        Part::Tenant => SafeId::tenant,
                        _ => SafeId::parse,
                    };
                    key.is_char_boundary(len)
                        && parse(&key[..len]).is_some()
                        && rest(tail, &key[len..])
                }),
                Part::Id => {
                    key.len() >= 36
                        && key.is_char_boundary(36)
                        && Uuid::try_parse(&key[..36]).is_ok()
                        && rest(tail, &key[36..])
                }
                Part::Ext => MediaType::ALL.iter().any(|media| {
                    key.strip_prefix(media.extension())
                        .is_some_and(|key| rest(tail, key))
                }),
            }
        }
        rest(&self.parts, key)
    }

    /// Whether the layout has a folder per owner record, so `ownerId` is required.
    pub fn needs_owner(&self) -> bool {
        self.parts.contains(&Part::Owner)
    }
}

/// A relative object key, valid on every backend (like Django's FileField name).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StorageKey(String);

impl StorageKey {
    /// The longest key: the database's key columns take 1,024 characters (all of a
    /// key's are ASCII), as S3 takes 1,024 bytes.
    pub const MAX_LEN: usize = 1024;

    /// The key of a new attachment. `owner` must be given when the template needs it.
    pub fn for_attachment(
        template: &KeyTemplate,
        tenant: &SafeId,
        owner: Option<&SafeId>,
        id: Uuid,
        media: MediaType,
    ) -> Self {
        let mut key = String::new();
        for part in &template.parts {
            match part {
                Part::Literal(text) => key.push_str(text),
                Part::Tenant => key.push_str(tenant.as_str()),
                Part::Owner => key.push_str(owner.map(SafeId::as_str).unwrap_or("_")),
                Part::Id => key.push_str(&id.to_string()),
                Part::Ext => key.push_str(media.extension()),
            }
        }
        Self(key)
    }

    /// A key read back from the database.
    pub fn from_stored(key: String) -> Self {
        Self(key)
    }

    /// The folder of database backups; no collection layout reaches into it (each
    /// starts with a tenant, never [`SafeId::RESERVED_TENANT`], and holds a UUID), so
    /// `storage sweep` never touches it.
    pub const BACKUPS: &str = "backups/";

    /// The key of a database backup: `backups/<name>`.
    pub fn backup(name: &str) -> Self {
        Self(format!("{}{name}", Self::BACKUPS))
    }

    /// Where a direct upload's client PUTs its bytes: never an attachment's key, so a
    /// replayed upload URL cannot touch a stored file, on any provider. The `.`
    /// keeps it apart from every tenant (tenant ids cannot start with one).
    pub fn staging(id: Uuid) -> Self {
        Self(format!("{}{id}", Self::STAGING))
    }

    /// The folder of the staging keys.
    pub const STAGING: &str = ".attache-staging/";

    /// Whether `key` is a direct upload's staging key.
    pub fn is_staging(key: &str) -> bool {
        key.strip_prefix(Self::STAGING)
            .is_some_and(|id| Uuid::try_parse(id).is_ok())
    }

    /// The key of a short-lived object written by `storage check` and `/readyz`.
    pub fn probe() -> Self {
        Self(format!(".attache-probe/{}", Uuid::now_v7()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// No tenant's files share the folder of database backups.
    #[test]
    fn no_tenant_is_named_as_the_backups() {
        assert_eq!(StorageKey::BACKUPS, format!("{}/", SafeId::RESERVED_TENANT));
        assert!(SafeId::tenant(SafeId::RESERVED_TENANT).is_none());
        assert!(SafeId::tenant("acme").is_some());
    }

    #[test]
    fn renders_the_collection_layout() {
        let template = KeyTemplate::parse("{tenant}/contracts/{owner}/{id}{ext}").expect("valid");
        let tenant = SafeId::parse("acme").expect("valid");
        let owner = SafeId::parse("c-1").expect("valid");
        let id = Uuid::nil();
        let key = StorageKey::for_attachment(&template, &tenant, Some(&owner), id, MediaType::Pdf);
        assert_eq!(key.as_str(), format!("acme/contracts/c-1/{id}.pdf"));
        assert!(template.needs_owner());
        assert!(template.matches(key.as_str()));
        for other in [
            format!("backups/contracts/c-1/{id}.pdf.tmp"),
            format!("acme/contracts/{id}.pdf"),
            format!("acme/contracts/c-1/{id}.exe"),
            format!("acme/contracts/c 1/{id}.pdf"),
            "backups/2026-12-02T10-00-00Z.sqlite".to_owned(),
            "backups/attache-20261202T101500Z.pgdump".to_owned(),
            ".attache-probe/x".to_owned(),
            StorageKey::staging(id).into_string(),
        ] {
            assert!(!template.matches(&other), "{other}");
        }
        assert!(StorageKey::is_staging(StorageKey::staging(id).as_str()));
        assert!(!StorageKey::is_staging(key.as_str()));
    }

    #[test]
    fn refuses_templates_that_could_escape_or_collide() {
        for bad in [
            "contracts/{id}",
            "{tenant}/../{id}",
            "{tenant}/x",
            "{tenant}/{nope}/{id}",
            "{tenant}//{id}",
            "{tenant}/a b/{id}",
            &format!("{{tenant}}/{}{{id}}", "{owner}-".repeat(16)),
        ] {
            assert!(KeyTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
