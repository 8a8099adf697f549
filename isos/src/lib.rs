//! ISO 9660 images: where each file's data lies in the image.
//!
//! An image built from files of a tree holds those files' bytes in contiguous extents. If
//! the publisher cuts the image into chunks along those extents (each extent chunked as the
//! same file on its own would be) and the gaps between them (volume descriptors,
//! directories, padding), the image shares its chunks with the loose files, and a site that
//! has the files fetches little more than the image's metadata.
//!
//! The layout is read by running `xorriso` (`-find / -exec report_lba --`), so no ISO 9660
//! parser lives here. Hard links share an extent; a file split into several extents
//! (`-file_size_limit`) is one region when its extents are contiguous; zisofs-compressed
//! files are extents of opaque bytes like any other. A missing xorriso or a damaged image
//! gives an [`IsoError`]; the publisher then chunks the image as a plain file.

pub mod template;

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;
use std::process::Command;

/// The ISO 9660 logical block size.
pub const BLOCK: u64 = 2048;

/// Why a layout could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// xorriso could not be run.
    #[error("running xorriso for {path}: {source} (install xorriso)")]
    Xorriso {
        path: String,
        source: std::io::Error,
    },
    /// xorriso could not read the image.
    #[error("{path}: xorriso cannot read the image: {detail}")]
    Damaged { path: String, detail: String },
    /// xorriso's report did not parse.
    #[error("{path}: unexpected xorriso output line: {line}")]
    Report { path: String, line: String },
}

/// One extent of one file, as xorriso reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extent {
    /// Extent number within the file (0 for the first).
    pub xt: u32,
    /// First byte in the image.
    pub offset: u64,
    /// Data bytes (the file's bytes in this extent).
    pub len: u64,
    /// The file's path in the image (as xorriso prints it).
    pub path: String,
}

/// Whether the file at `path` looks like an ISO 9660 image (a primary volume descriptor
/// signature at byte 32769).
pub fn is_iso9660(path: &Path) -> std::io::Result<bool> {
    let mut f = std::fs::File::open(path)?;
    if f.metadata()?.len() < 16 * BLOCK + BLOCK {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(16 * BLOCK + 1))?;
    let mut sig = [0u8; 5];
    f.read_exact(&mut sig)?;
    Ok(&sig == b"CD001")
}

/// Parses the output of `xorriso -find / -exec report_lba --`.
pub fn parse_report_lba(text: &str) -> Result<Vec<Extent>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("File data lba:") else {
            continue;
        };
        let mut parts = rest.splitn(5, ',');
        let mut num = || -> Option<u64> { parts.next()?.trim().parse().ok() };
        let (Some(xt), Some(lba), Some(blocks), Some(size)) = (num(), num(), num(), num()) else {
            return Err(line.to_string());
        };
        let path = parts
            .next()
            .map(|p| p.trim().trim_matches('\'').to_string())
            .unwrap_or_default();
        let offset = lba.checked_mul(BLOCK).ok_or_else(|| line.to_string())?;
        // A zisofs-compressed file reports its uncompressed size but occupies only its
        // blocks: the image holds blocks * 2048 opaque bytes for it.
        let stored = blocks.checked_mul(BLOCK).ok_or_else(|| line.to_string())?;
        out.push(Extent {
            xt: u32::try_from(xt).map_err(|_| line.to_string())?,
            offset,
            len: size.min(stored),
            path,
        });
    }
    Ok(out)
}

/// The regions of the image to chunk as files: one per file (its extents merged when they
/// follow each other), hard links counted once, sorted, not overlapping, within the image.
pub fn regions(extents: &[Extent], image_size: u64) -> Vec<Range<u64>> {
    // Extents of one path, in extent order.
    let mut by_path: std::collections::BTreeMap<&str, Vec<&Extent>> = Default::default();
    for e in extents {
        by_path.entry(e.path.as_str()).or_default().push(e);
    }
    let mut out: Vec<Range<u64>> = Vec::new();
    for (_, mut xs) in by_path {
        xs.sort_by_key(|e| e.xt);
        let mut cur: Option<Range<u64>> = None;
        for e in xs {
            if e.len == 0 {
                continue;
            }
            let r = e.offset..e.offset.saturating_add(e.len);
            cur = match cur {
                Some(c) if c.end == r.start => Some(c.start..r.end),
                Some(c) => {
                    out.push(c);
                    Some(r)
                }
                None => Some(r),
            };
        }
        out.extend(cur);
    }
    out.retain(|r| r.end <= image_size && r.start < r.end);
    out.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
    out.dedup();
    // Drop anything overlapping an earlier region (a hard link reported with other sizes,
    // or a damaged directory): the gap chunking covers those bytes instead.
    let mut clean: Vec<Range<u64>> = Vec::with_capacity(out.len());
    for r in out {
        if clean.last().is_none_or(|l| l.end <= r.start) {
            clean.push(r);
        }
    }
    clean
}

/// The file-data regions of the image at `path`, by asking xorriso.
pub fn layout(path: &Path) -> Result<Vec<Range<u64>>, IsoError> {
    let p = path.display().to_string();
    let size = std::fs::metadata(path)
        .map_err(|source| IsoError::Xorriso {
            path: p.clone(),
            source,
        })?
        .len();
    let out = Command::new("xorriso")
        .args(["-abort_on", "FAILURE", "-return_with", "FAILURE", "32"])
        .arg("-indev")
        .arg(path)
        .args([
            "-backslash_codes",
            "on",
            "-find",
            "/",
            "-exec",
            "report_lba",
            "--",
        ])
        .output()
        .map_err(|source| IsoError::Xorriso {
            path: p.clone(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains("Report layout") {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let detail = stderr
            .lines()
            .filter(|l| l.contains("FAILURE") || l.contains("SORRY") || l.contains("ERROR"))
            .take(2)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(IsoError::Damaged {
            path: p,
            detail: if detail.is_empty() {
                format!("xorriso exited with {}", out.status)
            } else {
                detail
            },
        });
    }
    let extents = parse_report_lba(&stdout).map_err(|line| IsoError::Report { path: p, line })?;
    Ok(regions(&extents, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_and_regions() {
        let text = "Report layout: xt , Startlba ,   Blocks , Filesize , ISO image path\n\
            File data lba:  0 ,      183 ,        1 ,        3 , '/README'\n\
            File data lba:  0 ,       33 ,      147 ,   300000 , '/pool/a-link.deb'\n\
            File data lba:  0 ,       33 ,      147 ,   300000 , '/pool/a.deb'\n\
            File data lba:  0 ,      300 ,        2 ,     4096 , '/big'\n\
            File data lba:  1 ,      302 ,        1 ,      100 , '/big'\n\
            File data lba:  0 ,      180 ,        0 ,        0 , '/empty'\n\
            File data lba:  0 ,      400 ,        1 ,   200000 , '/z/zisofs.txt'\n";
        let x = parse_report_lba(text).expect("parses");
        assert_eq!(x.len(), 7);
        assert_eq!(x[6].len, 2048, "zisofs: its blocks, not its size");
        assert_eq!(x[1].offset, 33 * 2048);
        assert_eq!(x[1].path, "/pool/a-link.deb");
        let r = regions(&x, 1 << 30);
        assert_eq!(
            r,
            vec![
                33 * 2048..33 * 2048 + 300_000,
                183 * 2048..183 * 2048 + 3,
                300 * 2048..300 * 2048 + 4196,
                400 * 2048..401 * 2048
            ]
        );
        assert!(parse_report_lba("File data lba: x , 1 , 2 , 3 , '/a'").is_err());
        // Regions past the end of the image are dropped.
        assert!(regions(&x, 1000).is_empty());
    }
}
