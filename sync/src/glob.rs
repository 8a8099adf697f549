//! Which files are repository metadata (written after the payload they name).

/// File-name patterns of repository metadata: Debian (InRelease, Release*, Packages*,
/// Sources*, Contents*, Translation*) and RPM (repomd.xml* and the indexes it names, plain
/// or hash-prefixed: primary, filelists, other, comps, updateinfo, modules, *.sqlite*).
/// A payload file a pattern happens to match is only renamed a little later; an index no
/// pattern matches can be renamed before the payload it names.
pub const DEFAULT_METADATA_PATTERNS: &[&str] = &[
    "InRelease",
    "Release*",
    "Packages*",
    "Sources*",
    "Contents-*",
    "Translation-*",
    "repomd.xml*",
    "*.sqlite*",
    "*primary.xml*",
    "*filelists.xml*",
    "*other.xml*",
    "*comps*.xml*",
    "*updateinfo.xml*",
    "*modules.yaml*",
];

/// The repository indexes that name other indexes (Debian's Release files, RPM's
/// repomd.xml): among the metadata, these are renamed into place last.
pub(crate) const TOP_METADATA_PATTERNS: &[&str] =
    &["InRelease", "Release", "Release.gpg", "repomd.xml*"];

/// Matches a file name against a pattern with `*` (any run) and `?` (one byte).
pub fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = n;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            n = mark;
        } else {
            return false;
        }
    }
    while p < pattern.len() && pattern[p] == b'*' {
        p += 1;
    }
    p == pattern.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(glob_match(b"Packages*", b"Packages.xz"));
        assert!(glob_match(b"*.sqlite*", b"primary.sqlite.bz2"));
        assert!(glob_match(b"InRelease", b"InRelease"));
        assert!(!glob_match(b"InRelease", b"InRelease.x"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"Release*", b"foo_Release"));
        assert!(glob_match(b"*", b""));
    }
}
