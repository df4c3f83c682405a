//! Fuzzes the LTX decoder: any input must give an error or a valid file, never a panic, and a
//! valid file must survive a re-encode (byte-identical when uncompressed, reserved bytes aside).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ltxfs_core::ltx::{decode_slice, encode_to_vec, Decoder};

fuzz_target!(|data: &[u8]| {
    // The streaming decoder over a reader, with whatever follows the file left unread.
    if let Ok(mut dec) = Decoder::new(data) {
        let mut buf = vec![0u8; dec.header().page_size as usize];
        while let Ok(Some(_)) = dec.next_page(&mut buf) {}
        let _ = dec.finish_into_inner();
    }
    if let Ok((header, pages, trailer)) = decode_slice(data) {
        let again = encode_to_vec(
            header,
            pages.iter().map(|(p, d)| (*p, d.as_slice())),
            trailer.post_apply_checksum,
        )
        .expect("a file we decoded must re-encode");
        if header.is_compressed() {
            let (h2, p2, t2) = decode_slice(&again).expect("re-encoded file must decode");
            assert_eq!((h2, &p2, t2), (header, &pages, trailer));
        } else {
            // One encoding, except the 20 reserved header bytes (ignored on read, zero on write)
            // and the file checksum that covers them.
            let n = data.len();
            assert_eq!(again.len(), n);
            assert_eq!(again[..80], data[..80]);
            assert_eq!(again[100..n - 8], data[100..n - 8]);
        }
    }
});
