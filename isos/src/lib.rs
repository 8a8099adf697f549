//! ISO 9660 images: where each file's data lies in the image.
//!
//! An image built from files of a tree holds those files' bytes in contiguous extents. If
//! the publisher cuts the image into chunks along those extents (each extent chunked as the
//! same file on its own would be) and the gaps between them (volume descriptors,
//! directories, padding), the image shares its chunks with the loose files, and a site that
//! has the files fetches little more than the image's metadata.
//!
//! The layout is read by running `xorriso` (`-find / -exec report_sections --`, which gives
//! each extent's exact byte count, and `-report_el_torito plain`), so no ISO 9660 parser
//! lives here. Hard links share an extent; a file split into several extents (a file of
//! 4 GiB or more) is one region when its extents are contiguous; zisofs-compressed files are
//! extents of opaque bytes like any other; an El Torito boot image that is not a file of the
//! tree (hidden) is a region of its own. A missing xorriso or a damaged image gives an
//! [`IsoError`]; the publisher then chunks the image as a plain file.

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
        /// The path involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// xorriso could not read the image.
    #[error("{path}: xorriso cannot read the image: {detail}")]
    Damaged {
        /// The path involved.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// xorriso's report did not parse.
    #[error("{path}: unexpected xorriso output line: {line}")]
    Report {
        /// The path involved.
        path: String,
        /// The offending line.
        line: String,
    },
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

/// Parses the output of `xorriso -find / -exec report_sections --`: one line per extent,
/// with its first block, its blocks and its exact byte count ("Sectsize"; for a zisofs file,
/// the compressed bytes stored).
pub fn parse_report_sections(text: &str) -> Result<Vec<Extent>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("File data lba:") else {
            continue;
        };
        let mut parts = rest.splitn(5, ',');
        let mut num = || -> Option<u64> { parts.next()?.trim().parse().ok() };
        let (Some(xt), Some(lba), Some(blocks), Some(bytes)) = (num(), num(), num(), num()) else {
            return Err(line.to_string());
        };
        let path = parts
            .next()
            .map(|p| p.trim().trim_matches('\'').to_string())
            .unwrap_or_default();
        let offset = lba.checked_mul(BLOCK).ok_or_else(|| line.to_string())?;
        // Never more than the blocks it occupies, whatever the report says.
        let stored = blocks.checked_mul(BLOCK).ok_or_else(|| line.to_string())?;
        out.push(Extent {
            xt: u32::try_from(xt).map_err(|_| line.to_string())?,
            offset,
            len: bytes.min(stored),
            path,
        });
    }
    Ok(out)
}

/// Parses the output of `xorriso -report_el_torito plain`: the boot images that are not
/// files of the tree (no "img path" line) but whose size is known ("img blks"), as extents
/// named `El Torito image N`. Boot images with a path are files, reported as such.
pub fn parse_el_torito(text: &str) -> Result<Vec<Extent>, String> {
    let mut lba: std::collections::BTreeMap<u32, u64> = Default::default();
    let mut blocks: std::collections::BTreeMap<u32, u64> = Default::default();
    let mut with_path: std::collections::BTreeSet<u32> = Default::default();
    for line in text.lines() {
        let field = |prefix: &str| line.strip_prefix(prefix).map(str::split_whitespace);
        if let Some(mut f) = field("El Torito boot img :") {
            let n = f.next().and_then(|n| n.parse().ok());
            let l = f.last().and_then(|l| l.parse().ok());
            let (Some(n), Some(l)) = (n, l) else {
                return Err(line.to_string());
            };
            lba.insert(n, l);
        } else if let Some(mut f) = field("El Torito img blks :") {
            let n = f.next().and_then(|n| n.parse().ok());
            let b = f.next().and_then(|b| b.parse().ok());
            let (Some(n), Some(b)) = (n, b) else {
                return Err(line.to_string());
            };
            blocks.insert(n, b);
        } else if let Some(mut f) = field("El Torito img path :") {
            let n = f
                .next()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| line.to_string())?;
            with_path.insert(n);
        }
    }
    let mut out = Vec::new();
    for (n, l) in lba {
        let Some(b) = blocks.get(&n).filter(|_| !with_path.contains(&n)) else {
            continue;
        };
        let (Some(offset), Some(len)) = (l.checked_mul(BLOCK), b.checked_mul(BLOCK)) else {
            return Err(format!("El Torito image {n}: LBA {l}, {b} blocks"));
        };
        out.push(Extent {
            xt: 0,
            offset,
            len,
            path: format!("El Torito image {n}"),
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

/// The file-data regions of the image at `path` (and those of hidden boot images), by asking
/// xorriso.
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
            "-report_el_torito",
            "plain",
            "-find",
            "/",
            "-exec",
            "report_sections",
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
    let report = |line| IsoError::Report { path: p, line };
    let mut extents = parse_report_sections(&stdout).map_err(report)?;
    // Hidden boot images are an extra: a report line not understood only means none.
    extents.extend(parse_el_torito(&stdout).unwrap_or_default());
    Ok(regions(&extents, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_and_regions() {
        let text = "Report layout: xt , Startlba ,   Blocks , Sectsize , ISO image path\n\
            File data lba:  0 ,      183 ,        1 ,        3 , '/README'\n\
            File data lba:  0 ,       33 ,      147 ,   300000 , '/pool/a-link.deb'\n\
            File data lba:  0 ,       33 ,      147 ,   300000 , '/pool/a.deb'\n\
            File data lba:  0 ,      300 ,        2 ,     4096 , '/big'\n\
            File data lba:  1 ,      302 ,        1 ,      100 , '/big'\n\
            File data lba:  0 ,      180 ,        0 ,        0 , '/empty'\n\
            File data lba:  0 ,      400 ,        1 ,     1348 , '/z/zisofs.txt'\n\
            File data lba:  0 ,      500 ,        1 ,    99999 , '/lies'\n";
        let x = parse_report_sections(text).expect("parses");
        assert_eq!(x.len(), 8);
        assert_eq!(x[6].len, 1348, "zisofs: the bytes stored");
        assert_eq!(x[7].len, 2048, "never more than its blocks");
        assert_eq!(x[1].offset, 33 * 2048);
        assert_eq!(x[1].path, "/pool/a-link.deb");
        let r = regions(&x, 1 << 30);
        assert_eq!(
            r,
            vec![
                33 * 2048..33 * 2048 + 300_000,
                183 * 2048..183 * 2048 + 3,
                300 * 2048..300 * 2048 + 4196,
                400 * 2048..400 * 2048 + 1348,
                500 * 2048..501 * 2048,
            ]
        );
        assert!(parse_report_sections("File data lba: x , 1 , 2 , 3 , '/a'").is_err());
        // Regions past the end of the image are dropped.
        assert!(regions(&x, 1000).is_empty());
    }

    #[test]
    fn hidden_boot_images_are_regions() {
        let text = "El Torito catalog  : 64  1\n\
            El Torito cat path : /boot/boot.cat\n\
            El Torito images   :   N  Pltf  B   Emul  Ld_seg  Hdpt  Ldsiz         LBA\n\
            El Torito boot img :   1  BIOS  y   none  0x0000  0x00      4          65\n\
            El Torito boot img :   2  UEFI  y   none  0x0000  0x00   2880         900\n\
            El Torito img path :   1  /boot/isolinux.bin\n\
            El Torito img blks :   1  4\n\
            El Torito img blks :   2  720\n";
        let x = parse_el_torito(text).expect("parses");
        assert_eq!(
            x,
            vec![Extent {
                xt: 0,
                offset: 900 * 2048,
                len: 720 * 2048,
                path: "El Torito image 2".into()
            }]
        );
        assert!(parse_el_torito("El Torito boot img : x").is_err());
        assert!(parse_el_torito("Boot record  : El Torito\n")
            .expect("parses")
            .is_empty());
    }
}
