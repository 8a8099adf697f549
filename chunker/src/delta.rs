//! Patch-from compression: a file compressed with its previous version as a zstd prefix
//! (what `zstd --patch-from` does), and the inverse, bounded by the size the caller expects.

use zstd::zstd_safe::{self, CCtx, CParameter, DCtx, DParameter};

/// Files (and references) larger than this are not delta-compressed: both sides hold the
/// reference and the file in memory.
pub const MAX_DELTA_FILE: u64 = 128 << 20;

/// Why a delta could not be made or applied.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeltaError {
    /// The zstd library reported an error.
    #[error("zstd: {0}")]
    Zstd(&'static str),
    /// The frame decoded to another size than expected.
    #[error("the frame decodes to {got} bytes, {want} expected")]
    Size {
        /// Bytes decoded.
        got: u64,
        /// Bytes expected.
        want: u64,
    },
    /// A file or reference above [`MAX_DELTA_FILE`].
    #[error("{0} bytes is above the delta limit of {MAX_DELTA_FILE}")]
    TooLarge(u64),
}

fn z(code: usize) -> DeltaError {
    DeltaError::Zstd(zstd_safe::get_error_name(code))
}

/// The window that lets every byte of `reference` and `data` refer back to the reference.
fn window_log(total: usize) -> u32 {
    let bits = usize::BITS - total.max(1).leading_zeros();
    bits.clamp(17, 30)
}

fn check(len: usize) -> Result<(), DeltaError> {
    if len as u64 > MAX_DELTA_FILE {
        Err(DeltaError::TooLarge(len as u64))
    } else {
        Ok(())
    }
}

/// Compresses `data` at `level` with `reference` as prefix (an empty reference: alone).
pub fn encode(reference: &[u8], data: &[u8], level: i32) -> Result<Vec<u8>, DeltaError> {
    encode_with(reference, data, level, false)
}

/// [`encode`], with zstd's long-distance matching whatever the window (`long`): for data
/// whose matches lie far back in a large prefix (a batch of directory nodes, each against
/// its old node megabytes earlier), which the match finders below level 16 miss.
pub fn encode_with(
    reference: &[u8],
    data: &[u8],
    level: i32,
    long: bool,
) -> Result<Vec<u8>, DeltaError> {
    check(reference.len())?;
    check(data.len())?;
    let mut cctx = CCtx::try_create().ok_or(DeltaError::Zstd("cannot create a context"))?;
    let window = window_log(reference.len() + data.len());
    cctx.set_parameter(CParameter::CompressionLevel(level))
        .map_err(z)?;
    cctx.set_parameter(CParameter::WindowLog(window))
        .map_err(z)?;
    if window > 27 || long {
        cctx.set_parameter(CParameter::EnableLongDistanceMatching(true))
            .map_err(z)?;
    }
    cctx.set_pledged_src_size(Some(data.len() as u64))
        .map_err(z)?;
    if !reference.is_empty() {
        cctx.ref_prefix(reference).map_err(z)?;
    }
    let mut out = Vec::with_capacity(zstd_safe::compress_bound(data.len()));
    cctx.compress2(&mut out, data).map_err(z)?;
    Ok(out)
}

/// Decodes a frame made by [`encode`] with the same `reference`; the result must be exactly
/// `size` bytes (at most [`MAX_DELTA_FILE`]), so a hostile frame cannot make it larger.
pub fn decode(reference: &[u8], frame: &[u8], size: u64) -> Result<Vec<u8>, DeltaError> {
    if size > MAX_DELTA_FILE {
        return Err(DeltaError::TooLarge(size));
    }
    check(reference.len())?;
    let mut dctx = DCtx::try_create().ok_or(DeltaError::Zstd("cannot create a context"))?;
    dctx.set_parameter(DParameter::WindowLogMax(31))
        .map_err(z)?;
    if !reference.is_empty() {
        dctx.ref_prefix(reference).map_err(z)?;
    }
    let mut out: Vec<u8> = Vec::with_capacity(size as usize);
    let n = dctx.decompress(&mut out, frame).map_err(z)?;
    if n as u64 != size || out.len() as u64 != size {
        return Err(DeltaError::Size {
            got: n as u64,
            want: size,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(n: usize, seed: u32) -> Vec<u8> {
        let mut out = Vec::with_capacity(n);
        let mut x = seed;
        while out.len() < n {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            out.extend_from_slice(format!("line {} of the file\n", x % 10_000).as_bytes());
        }
        out
    }

    #[test]
    fn patch_from_is_small_and_exact() {
        let old = text(200_000, 1);
        let mut new = old.clone();
        new.splice(1000..1100, b"an edit in the middle\n".iter().copied());
        new.extend_from_slice(b"appended\n");
        let frame = encode(&old, &new, 19).expect("encode");
        assert!(frame.len() < 200, "{} bytes", frame.len());
        assert_eq!(decode(&old, &frame, new.len() as u64).expect("decode"), new);
        // Alone, the same file costs far more.
        let alone = encode(&[], &new, 19).expect("alone");
        assert!(alone.len() > 10 * frame.len());
        assert_eq!(decode(&[], &alone, new.len() as u64).expect("decode"), new);
    }

    #[test]
    fn wrong_reference_or_size_is_an_error_or_other_bytes() {
        let old = text(50_000, 2);
        let new = text(50_000, 3);
        let frame = encode(&old, &new, 3).expect("encode");
        // A shorter size bound: refused, never a larger buffer.
        assert!(decode(&old, &frame, new.len() as u64 - 1).is_err());
        assert!(decode(&old, &frame, new.len() as u64 + 1).is_err());
        // Another reference decodes to other bytes or fails; the caller's chunk check
        // catches the former.
        let other = text(50_000, 4);
        if let Ok(bytes) = decode(&other, &frame, new.len() as u64) {
            assert_ne!(bytes, new);
        }
        assert!(decode(&old, b"not a frame", 10).is_err());
        assert!(matches!(
            decode(&old, &frame, MAX_DELTA_FILE + 1),
            Err(DeltaError::TooLarge(_))
        ));
    }
}
