//! A pack's header, footer and trailer, as a client or publisher reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulpdist_format::pack::{decode_footer, decode_header, decode_trailer, FOOTER_LEN};

fuzz_target!(|data: &[u8]| {
    let _ = decode_header(data);
    let size = data.len() as u64;
    if let Ok(range) = decode_footer(&data[data.len().saturating_sub(FOOTER_LEN as usize)..], size) {
        if let (Ok(s), Ok(e)) = (usize::try_from(range.start), usize::try_from(range.end)) {
            if let Some(body) = data.get(s..e) {
                if let Ok(id) = decode_header(data) {
                    let _ = decode_trailer(id, body, range.start);
                }
            }
        }
    }
});
