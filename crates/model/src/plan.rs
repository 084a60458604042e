//! The mini-batch plan: mini-batch `i` covers manifest entries `[i*k, min((i+1)*k, n))`.
//!
//! The plan is arithmetic over a sorted manifest stored once, so a job over a million files costs one
//! manifest object and one row per mini-batch, never a row per file.

/// Returns how many mini-batches a job over `files` files has with `size` files per mini-batch.
pub fn batch_count(files: u64, size: u32) -> u64 {
    debug_assert!(size > 0, "mini_batch_size is validated to be at least 1");
    files.div_ceil(u64::from(size.max(1)))
}

/// Returns the half-open range of manifest entries that mini-batch `index` covers.
pub fn batch_range(index: u64, size: u32, files: u64) -> std::ops::Range<u64> {
    let size = u64::from(size.max(1));
    let start = (index * size).min(files);
    start..(start + size).min(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_cover_every_file_exactly_once() {
        for files in 0..60u64 {
            for size in 1..12u32 {
                let n = batch_count(files, size);
                let mut next = 0;
                for i in 0..n {
                    let r = batch_range(i, size, files);
                    assert_eq!(r.start, next, "files={files} size={size} batch={i}");
                    assert!(!r.is_empty() && r.end - r.start <= u64::from(size));
                    next = r.end;
                }
                assert_eq!(next, files);
            }
        }
    }

    #[test]
    fn plan_matches_the_reference_arithmetic() {
        assert_eq!(batch_count(25, 10), 3);
        assert_eq!(batch_range(2, 10, 25), 20..25);
        assert_eq!(batch_count(0, 10), 0);
    }
}
