//! xorriso's report on an image (`report_sections`, `-report_el_torito plain`): the image
//! may be hostile, and names in the report come from it. Whatever the text, the regions
//! handed to the chunker are sorted, disjoint, non-empty and inside the image, and the
//! segments cover the image exactly once.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pulpdist_isos::{parse_el_torito, parse_report_sections, regions, template::segments};

fuzz_target!(|data: &[u8]| {
    let (size, text) = data.split_at(data.len().min(5));
    let image_size = size.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b));
    let text = String::from_utf8_lossy(text);
    let mut extents = parse_report_sections(&text).unwrap_or_default();
    extents.extend(parse_el_torito(&text).unwrap_or_default());
    let rs = regions(&extents, image_size);
    for r in &rs {
        assert!(r.start < r.end && r.end <= image_size, "{r:?} of {image_size}");
    }
    for w in rs.windows(2) {
        assert!(w[0].end <= w[1].start, "{w:?}");
    }
    let mut pos = 0;
    for (r, _) in segments(&rs, image_size) {
        assert_eq!(r.start, pos);
        assert!(r.start < r.end);
        pos = r.end;
    }
    assert_eq!(pos, image_size);
});
