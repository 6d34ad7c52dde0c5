//! The handshake rules of RFC 6455 section 4.2.1 and wsedge's policy, one line per rule.

use wsedge::handshake::{
    parse_request, write_rejection, Answer, Parse, Policy, Refusal, Rejection, Status,
    MAX_RESPONSE_LEN,
};

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
const VALID: &[&str] = &[
    "Host: example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    KEY,
    "Sec-WebSocket-Version: 13",
];

/// A request with `line` and the valid header set, minus headers whose name starts one of
/// `drop`, plus `add`.
fn request(line: &str, drop: &[&str], add: &[&str]) -> Vec<u8> {
    let mut out = format!("{line}\r\n");
    for header in VALID
        .iter()
        .filter(|h| !drop.iter().any(|d| h.starts_with(d)))
    {
        out += &format!("{header}\r\n");
    }
    for header in add {
        out += &format!("{header}\r\n");
    }
    (out + "\r\n").into_bytes()
}

fn with(drop: &[&str], add: &[&str]) -> Vec<u8> {
    request("GET /chat HTTP/1.1", drop, add)
}

fn strict_policy() -> Policy {
    Policy {
        paths: vec!["/chat".into(), "/feed".into()],
        allowed_origins: vec!["https://app.example.com".into()],
        auth_token: Some(b"s3cret".to_vec()),
        subprotocols: vec!["v2.sync".into(), "v1.sync".into()],
        require_subprotocol: true,
        ..Policy::default()
    }
}

fn outcome(request: &[u8], policy: &Policy) -> Result<Option<String>, Rejection> {
    match parse_request(request, policy) {
        Parse::Upgrade(upgrade) => Ok(upgrade.protocol.map(str::to_owned)),
        Parse::Reject(rejection) => Err(rejection),
        Parse::Partial => panic!("complete request parsed as partial"),
        Parse::Http(request) => panic!("no --http-path, yet forwarded as HTTP: {request:?}"),
    }
}

macro_rules! rules {
    ($($name:ident: $request:expr, $policy:expr => $expected:expr;)*) => {$(
        #[test]
        fn $name() {
            assert_eq!(outcome(&$request, &$policy), $expected);
        }
    )*};
}

use Rejection::*;
const OK: Result<Option<String>, Rejection> = Ok(None);
fn chosen(protocol: &str) -> Result<Option<String>, Rejection> {
    Ok(Some(protocol.to_owned()))
}
fn default() -> Policy {
    Policy::default()
}

rules! {
    minimal_valid_request_upgrades:        with(&[], &[]), default() => OK;
    chrome_request_upgrades:               include_bytes!("fixtures/chrome.http").as_slice(), default() => OK;
    firefox_request_upgrades:              include_bytes!("fixtures/firefox.http").as_slice(), default() => OK;
    header_names_are_case_insensitive:     request("GET / HTTP/1.1", &["Host", "Upgrade", "Connection", "Sec-WebSocket-Key"],
                                               &["HOST: a", "upgrade: WebSocket", "connection: UPGRADE", "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ=="]), default() => OK;
    connection_lists_are_searched:         with(&["Connection"], &["Connection: keep-alive, Upgrade"]), default() => OK;
    connection_tokens_over_several_lines:  with(&["Connection"], &["Connection: keep-alive", "Connection: upgrade"]), default() => OK;
    upgrade_lists_are_searched:            with(&["Upgrade"], &["Upgrade: h2c, websocket"]), default() => OK;
    absolute_form_target_upgrades:         request("GET ws://example.com/chat HTTP/1.1", &[], &[]), strict_policy_without_auth() => OK;
    zero_content_length_is_allowed:        with(&[], &["Content-Length: 0"]), default() => OK;

    post_is_405:                           request("POST /chat HTTP/1.1", &[], &[]), default() => Err(MethodNotAllowed);
    lowercase_get_is_405:                  request("get /chat HTTP/1.1", &[], &[]), default() => Err(MethodNotAllowed);
    http_1_0_is_400:                       request("GET /chat HTTP/1.0", &[], &[]), default() => Err(HttpVersionTooOld);
    http_2_is_400:                         request("GET /chat HTTP/2.0", &[], &[]), default() => Err(UnsupportedHttpVersion);
    missing_host_is_400:                   with(&["Host"], &[]), default() => Err(MissingHost);
    repeated_host_is_400:                  with(&[], &["Host: other.example"]), default() => Err(RepeatedHost);
    missing_upgrade_is_426:                with(&["Upgrade"], &[]), default() => Err(MissingUpgrade);
    wrong_upgrade_is_426:                  with(&["Upgrade"], &["Upgrade: h2c"]), default() => Err(MissingUpgrade);
    missing_connection_is_426:             with(&["Connection"], &[]), default() => Err(MissingConnectionUpgrade);
    connection_keep_alive_only_is_426:     with(&["Connection"], &["Connection: keep-alive"]), default() => Err(MissingConnectionUpgrade);
    missing_version_is_426:                with(&["Sec-WebSocket-Version"], &[]), default() => Err(MissingVersion);
    version_8_is_426:                      with(&["Sec-WebSocket-Version"], &["Sec-WebSocket-Version: 8"]), default() => Err(UnsupportedVersion);
    repeated_version_is_426:               with(&[], &["Sec-WebSocket-Version: 13"]), default() => Err(UnsupportedVersion);
    missing_key_is_400:                    with(&["Sec-WebSocket-Key"], &[]), default() => Err(MissingKey);
    repeated_key_is_400:                   with(&[], &[KEY]), default() => Err(RepeatedKey);
    key_not_base64_is_400:                 with(&["Sec-WebSocket-Key"], &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j*Q=="]), default() => Err(InvalidKey);
    key_of_15_bytes_is_400:                with(&["Sec-WebSocket-Key"], &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j"]), default() => Err(InvalidKey);
    key_of_18_bytes_is_400:                with(&["Sec-WebSocket-Key"], &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZWVl"]), default() => Err(InvalidKey);
    empty_key_is_400:                      with(&["Sec-WebSocket-Key"], &["Sec-WebSocket-Key: "]), default() => Err(InvalidKey);
    body_is_400:                           with(&[], &["Content-Length: 5"]), default() => Err(UnexpectedBody);
    chunked_body_is_400:                   with(&[], &["Transfer-Encoding: chunked"]), default() => Err(UnexpectedBody);
    header_without_colon_is_400:           with(&[], &["X-Broken"]), default() => Err(MalformedHeaderName);
    space_before_colon_is_400:             with(&[], &["X-Broken : 1"]), default() => Err(MalformedHeaderName);
    obsolete_line_folding_is_400:          with(&[], &["X-Folded: a", " b"]), default() => Err(MalformedHeaderName);
    nul_in_value_is_400:                   with(&[], &["X-Nul: a\0b"]), default() => Err(MalformedHeaderValue);
    control_byte_in_value_is_400:          with(&[], &["X-Bell: a\x07b"]), default() => Err(MalformedHeaderValue);
    bare_lf_is_400:                        b"GET / HTTP/1.1\nHost: a\r\nUpgrade: websocket\r\n\r\n".as_slice(), default() => Err(BareLineFeed);
    bare_cr_is_400:                        with(&[], &["X-Cr: a\rb"]), default() => Err(MalformedHeaderValue);
    space_in_target_is_400:                request("GET /a b HTTP/1.1", &[], &[]), default() => Err(UnsupportedHttpVersion);
    asterisk_target_is_400:                request("GET * HTTP/1.1", &[], &[]), default() => Err(MalformedTarget);
    too_many_headers_is_431:               with(&[], &["X-A: 1"; 64]), default() => Err(TooManyHeaders);

    unknown_path_is_404:                   request("GET /admin HTTP/1.1", &[], &[]), strict_policy_without_auth() => Err(PathNotFound);
    allowed_path_with_query_upgrades:      request("GET /feed?since=10 HTTP/1.1", &[], &[]), strict_policy_without_auth() => OK;
    foreign_origin_is_403:                 with(&[], &["Origin: https://evil.example"]), strict_policy_without_auth() => Err(OriginNotAllowed);
    origin_compare_ignores_case:           with(&[], &["Origin: HTTPS://App.Example.com"]), strict_policy_without_auth() => OK;
    repeated_origin_is_403:                with(&[], &["Origin: https://app.example.com", "Origin: https://evil.example"]), strict_policy_without_auth() => Err(OriginNotAllowed);
    no_origin_passes_the_allow_list:       with(&[], &[]), strict_policy_without_auth() => OK;
    missing_token_is_401:                  with(&[], &["Sec-WebSocket-Protocol: v1.sync"]), strict_policy() => Err(MissingCredentials);
    wrong_token_is_401:                    with(&[], &["Authorization: Bearer s3cre7", "Sec-WebSocket-Protocol: v1.sync"]), strict_policy() => Err(InvalidCredentials);
    basic_auth_is_not_a_bearer_token:      with(&[], &["Authorization: Basic czNjcmV0", "Sec-WebSocket-Protocol: v1.sync"]), strict_policy() => Err(MissingCredentials);
    bearer_header_authenticates:           with(&[], &["Authorization: Bearer s3cret", "Sec-WebSocket-Protocol: v1.sync"]), strict_policy() => chosen("v1.sync");
    query_token_authenticates:             request("GET /chat?room=1&access_token=s3cret HTTP/1.1", &[], &["Sec-WebSocket-Protocol: v1.sync"]), strict_policy() => chosen("v1.sync");
    wrong_query_token_is_401:              request("GET /chat?access_token=nope HTTP/1.1", &[], &["Sec-WebSocket-Protocol: v1.sync"]), strict_policy() => Err(InvalidCredentials);

    server_preference_wins:                with(&[], &["Sec-WebSocket-Protocol: v1.sync, v2.sync"]), strict_policy_without_auth() => chosen("v2.sync");
    offers_over_several_lines_count:       with(&[], &["Sec-WebSocket-Protocol: mqtt", "Sec-WebSocket-Protocol: v1.sync"]), strict_policy_without_auth() => chosen("v1.sync");
    subprotocols_are_case_sensitive:       with(&[], &["Sec-WebSocket-Protocol: V2.SYNC"]), requiring_subprotocol() => Err(NoAcceptableSubprotocol);
    no_common_subprotocol_is_400_if_required: with(&[], &["Sec-WebSocket-Protocol: mqtt"]), requiring_subprotocol() => Err(NoAcceptableSubprotocol);
    no_common_subprotocol_answers_none:    with(&[], &["Sec-WebSocket-Protocol: mqtt"]), Policy { subprotocols: vec!["chat".into()], ..default() } => OK;
    no_offer_is_400_if_required:           with(&[], &[]), requiring_subprotocol() => Err(NoAcceptableSubprotocol);
    no_configured_subprotocols_answer_none: with(&[], &["Sec-WebSocket-Protocol: chat"]), default() => OK;
}

fn strict_policy_without_auth() -> Policy {
    Policy {
        auth_token: None,
        require_subprotocol: false,
        ..strict_policy()
    }
}

#[test]
fn header_block_over_the_limit_is_431_even_before_it_ends() {
    let policy = Policy {
        max_header_bytes: 256,
        ..Policy::default()
    };
    let long = format!("X-Padding: {}", "a".repeat(300));
    assert_eq!(outcome(&with(&[], &[&long]), &policy), Err(HeadersTooLarge));
    let unfinished = &with(&[], &[&long])[..260];
    assert_eq!(
        parse_request(unfinished, &policy),
        Parse::Reject(HeadersTooLarge)
    );
    assert_eq!(parse_request(&unfinished[..255], &policy), Parse::Partial);
}

#[test]
fn bytes_after_the_header_block_are_reported_not_consumed() {
    let mut bytes = with(&[], &[]);
    let header_len = bytes.len();
    bytes.extend_from_slice(&[0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
    let Parse::Upgrade(upgrade) = parse_request(&bytes, &Policy::default()) else {
        panic!("did not upgrade");
    };
    assert_eq!(upgrade.header_len, header_len);
    assert_eq!(upgrade.path(), "/chat");
}

#[test]
fn rfc_sample_key_gives_rfc_accept_token() {
    let request = with(&[], &[]);
    let Parse::Upgrade(upgrade) = parse_request(&request, &Policy::default()) else {
        panic!("did not upgrade");
    };
    assert_eq!(&upgrade.accept_token(), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

/// Every rejection and refusal is a complete, parseable HTTP/1.1 response that closes the connection,
/// with the headers its status requires and the reason as its body.
#[test]
fn every_rejection_is_a_complete_response() {
    let all = Answer::KINDS.map(|kind| match kind {
        Answer::Refused(Refusal::Overloaded { .. }) => Refusal::Overloaded {
            retry_after_secs: 7,
        }
        .into(),
        Answer::Refused(Refusal::RateLimited { .. }) => Refusal::RateLimited {
            retry_after_secs: 3,
        }
        .into(),
        Answer::Refused(Refusal::UpstreamsFull { .. }) => Refusal::UpstreamsFull {
            retry_after_secs: 7,
        }
        .into(),
        Answer::Refused(Refusal::NoUpstreamUp { .. }) => Refusal::NoUpstreamUp {
            retry_after_secs: 7,
        }
        .into(),
        Answer::Refused(Refusal::UpstreamsBusy { .. }) => Refusal::UpstreamsBusy {
            retry_after_secs: 7,
        }
        .into(),
        other => other,
    });
    for rejection in all {
        let mut out = [0u8; MAX_RESPONSE_LEN];
        let n = write_rejection(&mut out, rejection).expect("fits");
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let header_len = match response.parse(&out[..n]) {
            Ok(httparse::Status::Complete(len)) => len,
            other => panic!("{rejection:?}: unparseable response {other:?}"),
        };
        assert_eq!(
            response.code,
            Some(rejection.status().code()),
            "{rejection:?}"
        );
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| std::str::from_utf8(h.value).unwrap())
        };
        let body = std::str::from_utf8(&out[header_len..n]).unwrap();
        assert_eq!(body, format!("{}\n", rejection.reason()));
        assert_eq!(
            header("Content-Length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(header("Connection"), Some("close"));
        let required: &[(&str, &str)] = match rejection.status() {
            // A method `--http-path` does not forward: the ones it does.
            Status::MethodNotAllowed if rejection == Answer::Rejected(HttpMethodNotForwarded) => {
                &[("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS")]
            }
            Status::MethodNotAllowed => &[("Allow", "GET")],
            Status::UpgradeRequired
                if matches!(
                    rejection,
                    Answer::Rejected(MissingVersion | UnsupportedVersion)
                ) =>
            {
                &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")]
            }
            Status::UpgradeRequired => &[("Upgrade", "websocket")],
            Status::ServiceUnavailable => &[("Retry-After", "7")],
            Status::TooManyRequests => &[("Retry-After", "3")],
            _ => &[],
        };
        for (name, value) in required {
            assert_eq!(header(name), Some(*value), "{rejection:?} lacks {name}");
        }
        if rejection.status() == Status::Unauthorized {
            assert!(header("WWW-Authenticate").is_some_and(|v| v.starts_with("Bearer")));
        }
    }
}

fn requiring_subprotocol() -> Policy {
    Policy {
        auth_token: None,
        ..strict_policy()
    }
}
