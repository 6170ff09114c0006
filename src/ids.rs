//! Validated identifiers: tenant and owner ids become [`SafeId`] at the edge, so that
//! nothing unchecked ever reaches a storage key (SPEC 3).

use std::fmt;

/// `[A-Za-z0-9_-]{1,64}`: no `/`, no `..`, nothing a path or a URL would interpret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SafeId(String);

impl SafeId {
    pub const MAX_LEN: usize = 64;

    pub fn parse(value: &str) -> Option<Self> {
        let valid = (1..=Self::MAX_LEN).contains(&value.len())
            && value
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-');
        valid.then(|| Self(value.to_owned()))
    }

    /// A tenant id: a safe id other than the folder of database backups
    /// (`backups`), which a tenant's files would otherwise share, lifecycle rules and
    /// access policies on that prefix included.
    pub fn tenant(value: &str) -> Option<Self> {
        // In any case: on a case-insensitive disk `Backups` is the same folder.
        Self::parse(value).filter(|id| !id.0.eq_ignore_ascii_case(Self::RESERVED_TENANT))
    }

    /// The one safe id that names no tenant.
    pub const RESERVED_TENANT: &str = "backups";

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::SafeId;

    #[test]
    fn accepts_only_the_safe_alphabet() {
        assert!(SafeId::parse("acme_42-x").is_some());
        for hostile in ["", "../etc", "a/b", "a.b", "é", "a b", &"x".repeat(65)] {
            assert!(SafeId::parse(hostile).is_none(), "{hostile:?}");
        }
    }
}
