//! Properties of the request parser: no input panics it, and how the bytes are split
//! across reads never changes the answer.

use proptest::prelude::*;
use wsedge::handshake::{parse_request, Parse, Policy};

const CHROME: &[u8] = include_bytes!("fixtures/chrome.http");
const FIREFOX: &[u8] = include_bytes!("fixtures/firefox.http");

fn policy() -> Policy {
    Policy {
        max_header_bytes: 1024,
        paths: vec!["/chat".into()],
        subprotocols: vec!["superchat".into()],
        ..Policy::default()
    }
}

/// Feeds `bytes` as a client would send them, in reads ending at `cuts`, and returns the
/// first answer that is not `Partial` (as the connection state machine does), or `Partial`.
fn parse_in_pieces(bytes: &[u8], cuts: &[usize], policy: &Policy) -> String {
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    ends.push(bytes.len());
    ends.sort_unstable();
    for end in ends {
        match parse_request(&bytes[..end], policy) {
            Parse::Partial => continue,
            answer => return format!("{answer:?}"),
        }
    }
    format!("{:?}", Parse::Partial)
}

/// Real requests, perturbed: a byte replaced, bytes cut out, or frame bytes appended.
fn requests() -> impl Strategy<Value = Vec<u8>> {
    let base = prop_oneof![Just(CHROME.to_vec()), Just(FIREFOX.to_vec())];
    (
        base,
        any::<u8>(),
        any::<prop::sample::Index>(),
        0usize..4,
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(mut request, byte, at, mode, tail)| {
            let i = at.index(request.len());
            match mode {
                0 => {}
                1 => request[i] = byte,
                2 => {
                    request.drain(i..(i + 8).min(request.len()));
                }
                _ => request.extend_from_slice(&tail),
            }
            request
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_request(&bytes, &policy());
    }

    #[test]
    fn arbitrary_text_lines_never_panic(lines in prop::collection::vec("[ -~]{0,40}", 0..30)) {
        let text = format!("GET / HTTP/1.1\r\n{}\r\n\r\n", lines.join("\r\n"));
        let _ = parse_request(text.as_bytes(), &policy());
    }

    #[test]
    fn split_requests_parse_like_whole_ones(
        request in requests(),
        cuts in prop::collection::vec(any::<usize>(), 0..6),
    ) {
        let policy = policy();
        let whole = format!("{:?}", parse_request(&request, &policy));
        prop_assert_eq!(parse_in_pieces(&request, &cuts, &policy), whole);
    }

    #[test]
    fn every_single_split_point_agrees(request in requests(), cut in any::<prop::sample::Index>()) {
        let policy = policy();
        let cut = cut.index(request.len() + 1);
        let whole = format!("{:?}", parse_request(&request, &policy));
        prop_assert_eq!(parse_in_pieces(&request, &[cut], &policy), whole);
    }
}

/// Not random: a real request cut at every byte boundary.
#[test]
fn chrome_request_at_every_boundary() {
    let policy = policy();
    let whole = format!("{:?}", parse_request(CHROME, &policy));
    assert!(whole.starts_with("Upgrade("), "{whole}");
    for cut in 0..=CHROME.len() {
        assert_eq!(
            parse_in_pieces(CHROME, &[cut], &policy),
            whole,
            "cut at {cut}"
        );
        if cut < CHROME.len() {
            assert_eq!(
                parse_request(&CHROME[..cut], &policy),
                Parse::Partial,
                "prefix of {cut}"
            );
        }
    }
}
