//! The lane's chunked-body follower (`lane::response::Chunks`) against a
//! reference decoder written here from the grammar (RFC 9112 §7.1, with
//! the lane's choices: sizes below 2^60, extensions and trailer lines
//! taken as any bytes up to CRLF, bare LF refused). Fed whole, or split at
//! arbitrary points, `feed`/`feed_data` must agree with the reference on
//! the outcome (error, incomplete, or complete after how many bytes) and
//! on the decoded data.
//!
//! Input: one byte `k` (how many cut points follow, `k % 8`), `k` cut
//! points of two bytes each, then the body.

#![no_main]

use duotone::lane::response::Chunks;
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Malformed.
    Bad,
    /// Ran out of input without an error.
    Incomplete,
    /// The body ends after this many bytes.
    Complete(usize),
}

/// Largest chunk size accepted (exclusive).
const SIZE_LIMIT: u64 = 1 << 60;

/// The reference: decodes `buf` as one chunked body.
fn reference(buf: &[u8]) -> (Outcome, Vec<u8>) {
    let mut data = Vec::new();
    let mut i = 0;
    // Returns the byte at `i`, or the outcome when input is exhausted.
    macro_rules! next {
        () => {{
            let Some(&b) = buf.get(i) else {
                return (Outcome::Incomplete, data);
            };
            i += 1;
            b
        }};
    }
    macro_rules! expect {
        ($c:expr) => {{
            if next!() != $c {
                return (Outcome::Bad, data);
            }
        }};
    }
    loop {
        // chunk-size: 1*HEXDIG
        let mut size: u64 = 0;
        let mut digits = 0;
        let after = loop {
            let b = next!();
            match (b as char).to_digit(16) {
                Some(d) => {
                    let v = u128::from(size) * 16 + u128::from(d);
                    if v >= u128::from(SIZE_LIMIT) {
                        return (Outcome::Bad, data);
                    }
                    size = v as u64;
                    digits += 1;
                }
                None => break b,
            }
        };
        if digits == 0 {
            return (Outcome::Bad, data);
        }
        // [ (";" / SP / HTAB) any bytes but CR and LF ] CRLF
        match after {
            b'\r' => {}
            b';' | b' ' | b'\t' => loop {
                match next!() {
                    b'\r' => break,
                    b'\n' => return (Outcome::Bad, data),
                    _ => {}
                }
            },
            _ => return (Outcome::Bad, data),
        }
        expect!(b'\n');
        if size == 0 {
            // Trailer lines (any bytes but CR and LF) up to an empty line.
            loop {
                match next!() {
                    b'\r' => {
                        expect!(b'\n');
                        return (Outcome::Complete(i), data);
                    }
                    b'\n' => return (Outcome::Bad, data),
                    _ => loop {
                        match next!() {
                            b'\r' => {
                                expect!(b'\n');
                                break;
                            }
                            b'\n' => return (Outcome::Bad, data),
                            _ => {}
                        }
                    },
                }
            }
        }
        let avail = (buf.len() - i) as u64;
        let take = size.min(avail) as usize;
        data.extend_from_slice(&buf[i..i + take]);
        i += take;
        if (take as u64) < size {
            return (Outcome::Incomplete, data);
        }
        expect!(b'\r');
        expect!(b'\n');
    }
}

/// Feeds `parts` in order, as the relay does: stop at an error or once
/// done. Returns the outcome, the decoded data (with `feed_data`) and
/// whether `feed` (no data) agreed on every step.
fn lane(parts: &[&[u8]]) -> (Outcome, Vec<u8>) {
    let mut with_data = Chunks::default();
    let mut plain = Chunks::default();
    let mut data = Vec::new();
    let mut total = 0;
    for (k, part) in parts.iter().enumerate() {
        let a = with_data.feed_data(part, &mut data);
        let b = plain.feed(part);
        assert_eq!(a, b, "feed and feed_data differ at part {k}");
        assert_eq!(with_data.done(), plain.done());
        match a {
            Err(_) => return (Outcome::Bad, data),
            Ok(n) => {
                assert!(n <= part.len());
                total += n;
                if with_data.done() {
                    // Fed again after the end: nothing more is taken.
                    assert_eq!(with_data.feed(b"0\r\n\r\n"), Ok(0));
                    return (Outcome::Complete(total), data);
                }
                assert_eq!(n, part.len(), "stopped early without being done");
            }
        }
    }
    (Outcome::Incomplete, data)
}

fuzz_target!(|input: &[u8]| {
    let Some((&k, rest)) = input.split_first() else {
        return;
    };
    let k = usize::from(k % 8);
    if rest.len() < 2 * k {
        return;
    }
    let (cuts, body) = rest.split_at(2 * k);
    let mut points: Vec<usize> = cuts
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (body.len() + 1))
        .collect();
    points.sort_unstable();
    let mut parts = Vec::new();
    let mut at = 0;
    for p in points {
        parts.push(&body[at..p]);
        at = p;
    }
    parts.push(&body[at..]);

    let want = reference(body);
    let whole = lane(&[body]);
    assert_eq!(whole, want, "whole feed differs from the reference");
    let split = lane(&parts);
    assert_eq!(split, whole, "split feed differs from whole");
    // Byte by byte, for short bodies.
    if body.len() <= 64 {
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(lane(&bytes), whole, "byte-by-byte feed differs from whole");
    }
});
