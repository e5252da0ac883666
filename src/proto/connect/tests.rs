use proptest::prelude::*;

use super::*;

fn complete(head: &str) -> (ConnectRequest, usize) {
    match parse(head.as_bytes()) {
        Ok(Parse::Complete { request, consumed }) => (request, consumed),
        other => panic!("expected a complete head for {head:?}, got {other:?}"),
    }
}

fn error(head: &[u8]) -> RequestError {
    match parse(head) {
        Err(error) => error,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn a_plain_connect_parses_and_reports_what_it_consumed() {
    let head = "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    let (request, consumed) = complete(&format!("{head}\x16\x03\x01pipelined"));
    assert_eq!(consumed, head.len());
    assert_eq!(
        request.target,
        Target {
            host: Host::Domain("example.com".into()),
            port: 443
        }
    );
}

#[test]
fn partial_heads_ask_for_more() {
    let head = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
    for end in 0..head.len() {
        assert_eq!(
            parse(&head[..end]),
            Ok(Parse::Partial),
            "prefix of {end} bytes"
        );
    }
}

#[test]
fn targets_in_authority_form() {
    let cases = [
        ("[::1]:443", Host::Ip("::1".parse().unwrap()), 443),
        (
            "[2001:db8::1]:8443",
            Host::Ip("2001:db8::1".parse().unwrap()),
            8443,
        ),
        ("10.1.2.3:1", Host::Ip("10.1.2.3".parse().unwrap()), 1),
        (
            "Example.COM.:65535",
            Host::Domain("example.com".into()),
            65535,
        ),
        (
            "a_b-c.example:443",
            Host::Domain("a_b-c.example".into()),
            443,
        ),
    ];
    for (target, host, port) in cases {
        let (request, _) = complete(&format!("CONNECT {target} HTTP/1.1\r\n\r\n"));
        assert_eq!(request.target, Target { host, port }, "{target}");
    }
}

#[test]
fn bad_targets_are_400() {
    for target in [
        "example.com",
        "example.com:",
        "example.com:0",
        "example.com:65536",
        "example.com:+443",
        "example.com:44a",
        "user:pass@example.com:443",
        "http://example.com:443",
        "/index.html",
        "*",
        "::1:443",
        "[::1]",
        "[::1]443",
        "[fe80::1%eth0]:443",
        "127.1:443",
        "0x7f.1:443",
        "exa mple.com:443",
        "bad..name:443",
        ":443",
    ] {
        let head = format!("CONNECT {target} HTTP/1.1\r\n\r\n");
        let error = error(head.as_bytes());
        assert_eq!(error.status(), Status::BadRequest, "{target}: {error}");
    }
}

#[test]
fn other_methods_are_405_and_methods_are_case_sensitive() {
    for method in ["GET", "connect", "Connect", "POST", "PRI"] {
        let head = format!("{method} example.com:443 HTTP/1.1\r\n\r\n");
        assert_eq!(
            error(head.as_bytes()).status(),
            Status::MethodNotAllowed,
            "{method}"
        );
    }
}

#[test]
fn malformed_heads_are_400() {
    for head in [
        &b"CONNECT example.com:443\r\n\r\n"[..],
        b"CONNECT example.com:443 HTTP/2.0\r\n\r\n",
        b"CONNECT  example.com:443 HTTP/1.1\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let error = error(head);
        assert_eq!(error.status(), Status::BadRequest, "{head:?}: {error}");
    }
    let (_, consumed) = complete("CONNECT a.example:443 HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert!(consumed > 0);
}

#[test]
fn a_head_that_cannot_start_a_request_is_refused_at_its_first_byte() {
    // A TLS ClientHello's first byte, alone: no need to wait for more.
    assert_eq!(error(b"\x16"), RequestError::TlsToProxy);
    assert_eq!(error(b"\x16\x03\x01\x02\x00").status(), Status::BadRequest);
    // A SOCKS5 greeting, and bytes no method may contain.
    for head in [&b"\x05\x01\x00"[..], b"GE\x00", b"\r\n\xff", b"CONNECT\t"] {
        assert_eq!(
            error(head),
            RequestError::Malformed("invalid method"),
            "{head:?}"
        );
    }
    // A method still arriving is only partial.
    for head in ["C", "CONN", "\r\nCONNECT", "CONNECT "] {
        assert_eq!(parse(head.as_bytes()), Ok(Parse::Partial), "{head:?}");
    }
}

#[test]
fn leading_empty_lines_and_bare_line_feeds_are_tolerated() {
    complete("\r\nCONNECT a.example:443 HTTP/1.1\r\n\r\n");
    complete("CONNECT a.example:443 HTTP/1.0\nHost: a.example\n\n");
}

#[test]
fn limits_give_414_and_431() {
    let long_target = format!(
        "CONNECT {}.example:443 HTTP/1.1\r\n",
        "a".repeat(MAX_REQUEST_LINE)
    );
    assert_eq!(
        error(long_target.as_bytes()),
        RequestError::RequestLineTooLong
    );
    assert_eq!(error(long_target.as_bytes()).status(), Status::UriTooLong);
    // Refused before the line is finished.
    assert_eq!(
        error(&long_target.as_bytes()[..MAX_REQUEST_LINE + 10]),
        RequestError::RequestLineTooLong
    );

    let long_header = format!(
        "CONNECT a.example:443 HTTP/1.1\r\nX: {}\r\n\r\n",
        "v".repeat(MAX_HEADER_LINE)
    );
    assert_eq!(
        error(long_header.as_bytes()),
        RequestError::HeaderLineTooLong
    );

    let mut many = String::from("CONNECT a.example:443 HTTP/1.1\r\n");
    for i in 0..MAX_LINES {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    complete(&format!("{many}\r\n"));
    many.push_str("X-last: v\r\n\r\n");
    assert_eq!(error(many.as_bytes()), RequestError::TooManyLines);

    let mut big = String::from("CONNECT a.example:443 HTTP/1.1\r\n");
    for i in 0..8 {
        big.push_str(&format!("X-{i}: {}\r\n", "v".repeat(8000)));
    }
    assert_eq!(error(big.as_bytes()), RequestError::HeadTooLarge);
    assert_eq!(error(big.as_bytes()).status(), Status::HeaderFieldsTooLarge);

    let endless_blank_lines = "\r\n".repeat(MAX_HEAD);
    assert_eq!(
        error(endless_blank_lines.as_bytes()),
        RequestError::HeadTooLarge
    );
}

#[test]
fn the_largest_allowed_head_is_accepted() {
    let mut head = String::from("CONNECT a.example:443 HTTP/1.1\r\n");
    let line = format!("X: {}\r\n", "v".repeat(MAX_HEADER_LINE - 3));
    while head.len() + line.len() + 2 <= MAX_HEAD {
        head.push_str(&line);
    }
    head.push_str("\r\n");
    assert!(head.len() <= MAX_HEAD);
    let (_, consumed) = complete(&head);
    assert_eq!(consumed, head.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_pass_the_limits(bytes in proptest::collection::vec(any::<u8>(), 0..40_000)) {
        check_invariants(&bytes)?;
    }

    #[test]
    fn near_valid_heads_never_panic_nor_pass_the_limits(
        method in prop_oneof![Just("CONNECT".to_string()), Just("connect".to_string()), "[A-Z]{1,8}"],
        target in "[a-z0-9.:\\[\\]@/_-]{0,40}",
        headers in proptest::collection::vec("[ -~]{0,60}", 0..120),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut head = format!("{method} {target} HTTP/1.1\r\n");
        for header in headers {
            head.push_str(&header);
            head.push_str("\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend(tail);
        check_invariants(&bytes)?;
    }
}

fn check_invariants(bytes: &[u8]) -> Result<(), TestCaseError> {
    match parse(bytes) {
        Ok(Parse::Complete { request, consumed }) => {
            prop_assert!(consumed <= MAX_HEAD && consumed <= bytes.len());
            let head = &bytes[..consumed];
            let lines = head
                .split(|&b| b == b'\n')
                .filter(|line| !line.is_empty() && *line != b"\r")
                .count();
            prop_assert!(lines <= MAX_LINES + 1);
            for line in head.split(|&b| b == b'\n') {
                prop_assert!(line.len() <= MAX_REQUEST_LINE.max(MAX_HEADER_LINE) + 1);
            }
            prop_assert!(request.target.port != 0);
            prop_assert!(head.windows(8).any(|window| window == b"CONNECT "));
        }
        Ok(Parse::Partial) => prop_assert!(bytes.len() <= MAX_HEAD),
        Err(_) => {}
    }
    Ok(())
}
