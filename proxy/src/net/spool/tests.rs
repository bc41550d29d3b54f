use super::{Limits, Spool};

fn limits(dir: &std::path::Path, memory: usize) -> Limits {
    Limits {
        dir: dir.to_path_buf(),
        memory,
        total_memory: usize::MAX,
        max_file: 1 << 20,
    }
}

/// Everything left in the spool, in order.
fn drain(s: &mut Spool, step: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let front = s.front().unwrap();
        if front.is_empty() {
            return out;
        }
        let n = front.len().min(step);
        out.extend_from_slice(&front[..n]);
        s.consume(n);
    }
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn small_bodies_stay_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::for_request(limits(dir.path(), 1024));
    s.push(b"hello ").unwrap();
    s.push(b"world").unwrap();
    assert!(!s.on_disk());
    assert_eq!(s.total(), 11);
    assert_eq!(drain(&mut s, 4), b"hello world");
    s.rewind();
    assert_eq!(drain(&mut s, 100), b"hello world");
}

#[test]
fn large_request_bodies_go_to_an_unnamed_temp_file_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::for_request(limits(dir.path(), 1000));
    let body = pattern(300_000, 7);
    for part in body.chunks(777) {
        s.push(part).unwrap();
    }
    assert!(s.on_disk());
    assert_eq!(s.total(), body.len() as u64);
    // The file has no name: the directory stays empty.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    assert_eq!(drain(&mut s, 5000), body);
    s.rewind();
    assert_eq!(drain(&mut s, 65536), body);
}

#[test]
fn a_response_spool_is_a_queue_that_keeps_order_across_memory_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::for_response(limits(dir.path(), 4096));
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for round in 0..200u32 {
        let part = pattern(1000 + (round as usize * 37) % 3000, round as u8);
        assert!(s.has_room());
        s.push(&part).unwrap();
        sent.extend_from_slice(&part);
        // The client takes less than arrives, sometimes nothing.
        if round % 3 != 0 {
            let front = s.front().unwrap();
            let n = front.len().min(1500);
            got.extend_from_slice(&front[..n]);
            s.consume(n);
        }
    }
    got.extend(drain(&mut s, 999));
    assert_eq!(got, sent);
    assert!(s.is_empty());
    // Drained: the file starts over.
    assert!(!s.on_disk());
}

#[test]
fn a_response_spool_has_no_room_past_its_file_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut l = limits(dir.path(), 100);
    l.max_file = 1000;
    let mut s = Spool::for_response(l);
    s.push(&[1; 100]).unwrap();
    assert!(s.has_room(), "memory full, file empty");
    s.push(&[2; 999]).unwrap();
    assert!(s.has_room());
    s.push(&[3; 1]).unwrap();
    assert!(!s.has_room());
    let n = s.front().unwrap().len();
    s.consume(n);
    assert!(!s.has_room(), "memory drained, the file is still full");
    assert_eq!(drain(&mut s, 10_000).len(), 1000);
    assert!(s.has_room());
}

#[test]
fn an_unusable_dir_fails_a_request_spool_and_keeps_a_response_in_memory() {
    let file = tempfile::NamedTempFile::new().unwrap();
    // A directory under a regular file: fails even for root.
    let dir = file.path().join("sub");
    let mut r = Spool::for_request(limits(&dir, 10));
    r.push(&[1; 10]).unwrap();
    let err = r.push(&[2; 10]).unwrap_err();
    assert!(err.to_string().contains("sub"), "{err}");
    assert_eq!(r.total(), 10, "nothing of the failed push was kept");

    let mut s = Spool::for_response(limits(&dir, 10));
    s.push(&[1; 10]).unwrap();
    s.push(&[2; 10]).unwrap();
    assert!(!s.has_room(), "no disk: the upstream waits for the client");
    assert_eq!(drain(&mut s, 3), [[1; 10], [2; 10]].concat());
    assert!(s.has_room());
}

#[test]
fn totals_count_memory_and_disk_while_held() {
    let dir = tempfile::tempdir().unwrap();
    let before = super::totals();
    let mut s = Spool::for_request(limits(dir.path(), 10));
    s.push(&[0; 10]).unwrap();
    s.push(&[0; 5000]).unwrap();
    let during = super::totals();
    assert!(during.spilled >= before.spilled + 5000);
    drop(s);
    // Other tests run at once: only what this one wrote is known.
    assert!(super::totals().spilled >= during.spilled);
}

#[test]
fn taking_whole_chunks_keeps_order_across_memory_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::for_response(limits(dir.path(), 5000));
    let mut sent = Vec::new();
    let mut got = Vec::new();
    for round in 0..100u32 {
        let part = pattern(700 + (round as usize * 53) % 2500, round as u8);
        s.push_bytes(bytes::Bytes::from(part.clone())).unwrap();
        sent.extend_from_slice(&part);
        if round % 4 == 1 {
            // A partial take of the front, then whole chunks.
            let n = s.front().unwrap().len().min(100);
            got.extend_from_slice(&s.front().unwrap()[..n]);
            s.consume(n);
        }
        if round % 2 == 0 {
            if let Some(b) = s.take().unwrap() {
                got.extend_from_slice(&b);
            }
        }
    }
    while let Some(b) = s.take().unwrap() {
        got.extend_from_slice(&b);
    }
    assert_eq!(got, sent);
    assert!(s.is_empty());
}
