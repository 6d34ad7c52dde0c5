//! Any bytes, in any split into reads, give the same answer as the whole; no answer but an
//! upgrade the parser accepted is ever a 101.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsedge::conn::AfterUpgrade;
use wsedge::handshake::{parse_request, Parse};
use wsedge_fuzz::{config, cuts_and_rest, drive};

fuzz_target!(|data: &[u8]| {
    let (cuts, input) = cuts_and_rest(data);
    let config = config(AfterUpgrade::Close);
    let whole = drive(&config, input, &[]);
    let split = drive(&config, input, &cuts);
    assert_eq!(whole, split, "the split changed the answer");
    let verdict = parse_request(input, &config.policy);
    if whole.out.starts_with(b"HTTP/1.1 101 ") {
        let Parse::Upgrade(upgrade) = verdict else {
            panic!("a 101 for a request the parser did not accept: {verdict:?}");
        };
        let head_end = whole.out.windows(4).position(|w| w == b"\r\n\r\n").expect("a whole head");
        let head = std::str::from_utf8(&whole.out[..head_end]).expect("the 101 is text");
        let accept = upgrade.accept_token();
        let expected = format!("Sec-WebSocket-Accept: {}", std::str::from_utf8(&accept).unwrap());
        assert!(head.contains(&expected), "wrong accept in {head}");
    } else if let Parse::Reject(rejection) = verdict {
        let status = rejection.status().code().to_string();
        assert!(
            whole.out.starts_with(format!("HTTP/1.1 {status} ").as_bytes()),
            "{rejection:?} answered as {:?}",
            String::from_utf8_lossy(&whole.out)
        );
    }
});
