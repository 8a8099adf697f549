//! Names from an index are hostile until checked: one path component, nothing else.

use std::fmt;

use crate::error::FormatError;

/// Longest entry name accepted (Linux NAME_MAX).
pub(crate) const MAX_NAME_LEN: usize = 255;

/// One validated path component: non-empty, at most 255 bytes, not `.` or `..`,
/// no `/` and no NUL. Any other bytes (including non-UTF-8) are kept exactly.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(Vec<u8>);

impl Name {
    /// Checks `bytes` and wraps them.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, FormatError> {
        let bytes = bytes.into();
        let why = if bytes.is_empty() {
            Some("empty name")
        } else if bytes.len() > MAX_NAME_LEN {
            Some("name longer than 255 bytes")
        } else if bytes == b"." || bytes == b".." {
            Some("'.' or '..' as a name")
        } else if bytes.contains(&b'/') {
            Some("'/' inside a name")
        } else if bytes.contains(&0) {
            Some("NUL inside a name")
        } else {
            None
        };
        match why {
            Some(reason) => Err(FormatError::invalid(
                "entry name",
                format!("{reason}: {:?}", String::from_utf8_lossy(&bytes)),
            )),
            None => Ok(Name(bytes)),
        }
    }

    /// The raw bytes of the name.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The name as an OS string (Unix: the exact bytes).
    pub fn to_os_string(&self) -> std::ffi::OsString {
        use std::os::unix::ffi::OsStringExt;
        std::ffi::OsString::from_vec(self.0.clone())
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// A tree name: 1–128 characters of `[A-Za-z0-9._-]`, not starting with `.` or `-`.
/// It becomes the object key `heads/<tree>`, so it is checked as strictly as a path.
pub fn validate_tree_name(tree: &str) -> Result<(), FormatError> {
    let ok = !tree.is_empty()
        && tree.len() <= 128
        && !tree.starts_with('.')
        && !tree.starts_with('-')
        && tree
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FormatError::invalid(
            "tree name",
            format!("'{tree}' must be 1-128 characters of A-Z a-z 0-9 . _ - and not start with '.' or '-'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_refused() {
        for bad in [
            &b""[..],
            b".",
            b"..",
            b"a/b",
            b"/etc",
            b"a\0b",
            &[b'x'; 256],
        ] {
            assert!(Name::new(bad.to_vec()).is_err(), "{bad:?}");
        }
        assert!(Name::new(b"ok name.deb".to_vec()).is_ok());
        assert!(Name::new(vec![0xff, 0xfe]).is_ok());
    }

    #[test]
    fn tree_names() {
        assert!(validate_tree_name("debian").is_ok());
        assert!(validate_tree_name("../x").is_err());
        assert!(validate_tree_name(".hidden").is_err());
        assert!(validate_tree_name("a/b").is_err());
    }
}
