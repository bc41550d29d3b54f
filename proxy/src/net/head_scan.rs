//! Finds where an HTTP/1 request head ends, incrementally: each byte is
//! looked at once however the head is split across reads, so a head
//! trickled a byte at a time costs no more than one sent whole.
//!
//! The head ends at the first empty line (`\r\n` or a bare `\n`, as the
//! parsers accept) that follows a non-empty one. Empty lines before the
//! request line are skipped, as the parsers skip them (RFC 9112 §2.2), so
//! they cannot end a head (and with it the slowloris deadline) early.

/// The scanner's state between reads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeadScan {
    /// A non-empty line has ended (the request line, at least).
    seen_line: bool,
    /// What the current, unfinished line holds so far.
    partial: Partial,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Partial {
    /// Nothing.
    #[default]
    Empty,
    /// A lone `\r`.
    Cr,
    /// Something else: the line is not empty.
    Text,
}

impl HeadScan {
    /// Feeds the next bytes read; true once the bytes fed hold a complete
    /// head (the scan then starts over, for the next head).
    pub fn feed(&mut self, new: &[u8]) -> bool {
        // Most heads arrive whole in one read: a first line that is not
        // empty and an empty line at the end mean a complete head.
        if *self == HeadScan::default()
            && new.ends_with(b"\r\n\r\n")
            && !matches!(new.first(), Some(b'\r' | b'\n'))
        {
            return true;
        }
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', new) {
            let line = &new[start..nl];
            let empty = match self.partial {
                Partial::Empty => line.is_empty() || line == b"\r",
                Partial::Cr => line.is_empty(),
                Partial::Text => false,
            };
            self.partial = Partial::Empty;
            start = nl + 1;
            if !empty {
                self.seen_line = true;
            } else if self.seen_line {
                *self = HeadScan::default();
                return true;
            }
        }
        let rest = &new[start..];
        if !rest.is_empty() {
            self.partial = match (self.partial, rest) {
                (Partial::Empty, b"\r") => Partial::Cr,
                _ => Partial::Text,
            };
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::HeadScan;

    /// Feeds `parts` in order; the index of the part completing the head.
    fn scan(parts: &[&[u8]]) -> Option<usize> {
        let mut s = HeadScan::default();
        parts.iter().position(|p| s.feed(p))
    }

    #[test]
    fn finds_the_end_however_it_is_split() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        for i in 0..head.len() {
            for j in i..head.len() {
                let parts = [&head[..i], &head[i..j], &head[j..]];
                let want = if j >= 27 { 1 } else { 2 };
                let want = if i >= 27 { 0 } else { want };
                assert_eq!(scan(&parts), Some(want), "split at {i},{j}");
            }
        }
        assert_eq!(scan(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(0));
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\nHost: a\r\n\n"]), Some(0));
        let bytes: Vec<&[u8]> = b"GET / HTTP/1.1\r\n\r\n".chunks(1).collect();
        assert_eq!(scan(&bytes), Some(17));
    }

    #[test]
    fn leading_empty_lines_do_not_end_a_head() {
        assert_eq!(scan(&[b"\r\n\r\n"]), None);
        assert_eq!(
            scan(&[b"\r\n", b"\n", b"\r\n\r\n", b"GET / HTTP/1.1\r\n"]),
            None
        );
        assert_eq!(
            scan(&[b"\r\n\r\nGET / HTTP/1.1\r\n", b"X-Slow: 1\r\n"]),
            None
        );
        assert_eq!(scan(&[b"\r\n\r\nGET / HTTP/1.1\r\n\r\n"]), Some(0));
        assert_eq!(scan(&[b"\n\r\n\r\n"]), None);
    }

    #[test]
    fn unfinished_heads_are_not_ended() {
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\r\nHost: a\r\n", b"X-Slow: 1\r\n"]),
            None
        );
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\n", b"\r", b"X\r\n"]), None);
        assert_eq!(scan(&[b"GET / HTTP/1.1\r\n\r\r\n"]), None);
        // The HTTP/2 preface holds an empty line after its first line.
        assert_eq!(scan(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]), Some(0));
    }

    #[test]
    fn the_fast_path_agrees_with_the_scan() {
        for head in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"X\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b" \r\n\r\n",
        ] {
            // Byte by byte takes the slow path only.
            let bytes: Vec<&[u8]> = head.chunks(1).collect();
            assert!(scan(&bytes).is_some(), "{head:?}");
            assert_eq!(scan(&[head]), Some(0), "{head:?}");
        }
    }
}
