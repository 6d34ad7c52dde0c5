//! The client-side check the load generator relies on: what a client must refuse.

use wsedge::handshake::{
    check_response, key_from_nonce, parse_request, write_request, write_switching_protocols,
    ClientRequest, Parse, Policy, ResponseCheck, ResponseError,
};

const KEY: &[u8] = b"dGhlIHNhbXBsZSBub25jZQ==";
const GOOD_101: &str = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                        Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";

fn check(extra: &str, offered: &[&str]) -> ResponseCheck<'static> {
    let text: &'static str = Box::leak(format!("{GOOD_101}{extra}\r\n").into_boxed_str());
    check_response(text.as_bytes(), KEY, offered)
}

#[test]
fn a_real_101_is_accepted() {
    assert_eq!(
        check("", &[]),
        ResponseCheck::Accepted {
            header_len: GOOD_101.len() + 2,
            protocol: None
        }
    );
}

/// Found by the `client_check` and `upstream_answer` fuzz targets: a 101 in an HTTP/1.0
/// response, with a correct token, was accepted (tungstenite refuses it, as must we: HTTP/1.0
/// has no upgrade). It reached `wsedge check`, the load generator and the proxy's upstream
/// check. A refusal in HTTP/1.0 is still a refusal.
#[test]
fn a_101_in_http_1_0_fails() {
    let response = GOOD_101.replace("HTTP/1.1", "HTTP/1.0") + "\r\n";
    assert_eq!(
        check_response(response.as_bytes(), KEY, &[]),
        ResponseCheck::Failed(ResponseError::WrongVersion)
    );
    assert_eq!(
        check_response(b"HTTP/1.0 403 Forbidden\r\n\r\n", KEY, &[]),
        ResponseCheck::Failed(ResponseError::NotSwitching { status: 403 })
    );
}

#[test]
fn an_offered_subprotocol_is_accepted() {
    let ResponseCheck::Accepted { protocol, .. } =
        check("Sec-WebSocket-Protocol: chat\r\n", &["x", "chat"])
    else {
        panic!("refused")
    };
    assert_eq!(protocol, Some("chat"));
}

#[test]
fn an_unoffered_subprotocol_fails() {
    assert_eq!(
        check("Sec-WebSocket-Protocol: chat\r\n", &["superchat"]),
        ResponseCheck::Failed(ResponseError::UnofferedSubprotocol)
    );
    assert_eq!(
        check("Sec-WebSocket-Protocol: chat, x\r\n", &["chat", "x"]),
        ResponseCheck::Failed(ResponseError::UnofferedSubprotocol)
    );
}

#[test]
fn an_unoffered_extension_fails() {
    assert_eq!(
        check("Sec-WebSocket-Extensions: permessage-deflate\r\n", &[]),
        ResponseCheck::Failed(ResponseError::UnofferedExtension)
    );
}

#[test]
fn a_wrong_accept_token_fails() {
    let replayed = GOOD_101.replace(
        "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
        "HSmrc0sMlYUkAGmm5OPpG2HaGWk=",
    );
    assert_eq!(
        check_response(format!("{replayed}\r\n").as_bytes(), KEY, &[]),
        ResponseCheck::Failed(ResponseError::WrongAccept)
    );
}

#[test]
fn other_statuses_and_missing_headers_fail() {
    let not_switching = b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\n\r\n";
    assert_eq!(
        check_response(not_switching, KEY, &[]),
        ResponseCheck::Failed(ResponseError::NotSwitching { status: 426 })
    );
    let no_upgrade = GOOD_101.replace("Upgrade: websocket\r\n", "") + "\r\n";
    assert_eq!(
        check_response(no_upgrade.as_bytes(), KEY, &[]),
        ResponseCheck::Failed(ResponseError::MissingUpgrade)
    );
    let no_connection = GOOD_101.replace("Connection: Upgrade\r\n", "") + "\r\n";
    assert_eq!(
        check_response(no_connection.as_bytes(), KEY, &[]),
        ResponseCheck::Failed(ResponseError::MissingConnection)
    );
    assert_eq!(
        check_response(b"garbage\r\n\r\n", KEY, &[]),
        ResponseCheck::Failed(ResponseError::Malformed)
    );
    assert_eq!(
        check_response(&GOOD_101.as_bytes()[..50], KEY, &[]),
        ResponseCheck::Partial
    );
}

/// The client and server halves agree with each other end to end, with no sockets.
#[test]
fn client_request_and_server_answer_round_trip() {
    let key = key_from_nonce(&[7; 16]);
    let mut request = [0u8; 512];
    let len = write_request(
        &mut request,
        &ClientRequest {
            host: "127.0.0.1:8080",
            target: "/chat",
            key: &key,
            protocols: &["v1", "v2"],
            extra_headers: &["Origin: http://localhost"],
        },
    )
    .expect("fits");
    let policy = Policy {
        subprotocols: vec!["v2".into()],
        ..Policy::default()
    };
    let Parse::Upgrade(upgrade) = parse_request(&request[..len], &policy) else {
        panic!("refused")
    };
    let mut response = [0u8; 512];
    let n = write_switching_protocols(&mut response, upgrade.key, upgrade.protocol).expect("fits");
    assert_eq!(
        check_response(&response[..n], &key, &["v1", "v2"]),
        ResponseCheck::Accepted {
            header_len: n,
            protocol: Some("v2")
        }
    );
}
