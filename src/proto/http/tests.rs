use proptest::prelude::*;

use super::*;

fn request(text: &str) -> Request {
    match parse_request(text.as_bytes()) {
        Ok(Parse::Complete { value, consumed }) => {
            assert_eq!(consumed, text.len());
            value
        }
        other => panic!("{other:?}"),
    }
}

fn refused(text: &str) -> HttpError {
    parse_request(text.as_bytes()).expect_err(text)
}

#[test]
fn an_absolute_request_becomes_origin_form_without_hop_by_hop_fields() {
    let parsed = request(
        "GET http://Example.COM:8080/a/b?q=1#frag HTTP/1.1\r\nHost: example.com:8080\r\n\
         Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nProxy-Connection: keep-alive\r\n\
         Proxy-Authorization: Basic eA==\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
         Upgrade: h2c\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(parsed.target.host, Host::Domain("example.com".into()));
    assert_eq!(parsed.target.port, 8080);
    assert_eq!(parsed.path, "/a/b?q=1");
    assert!(parsed.keep_alive);
    assert_eq!(parsed.body, Body::Empty);
    let head = String::from_utf8(parsed.encode()).unwrap();
    assert_eq!(
        head,
        "GET /a/b?q=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\nVia: 1.1 fyntr\r\n\r\n"
    );
}

#[test]
fn urls_without_a_path_or_port_get_defaults() {
    let parsed = request("GET http://example.com HTTP/1.1\r\n\r\n");
    assert_eq!((parsed.path.as_str(), parsed.target.port), ("/", 80));
    let parsed = request("GET http://example.com?x HTTP/1.1\r\n\r\n");
    assert_eq!(parsed.path, "/?x");
    let parsed = request("GET http://[::1]:81/ HTTP/1.1\r\n\r\n");
    assert_eq!(parsed.target.host, Host::Ip("::1".parse().unwrap()));
    assert_eq!(parsed.target.port, 81);
}

#[test]
fn http_1_0_closes_unless_it_asks_for_keep_alive() {
    assert!(!request("GET http://a.example/ HTTP/1.0\r\n\r\n").keep_alive);
    assert!(request("GET http://a.example/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    assert!(!request("GET http://a.example/ HTTP/1.1\r\nConnection: close\r\n\r\n").keep_alive);
}

#[test]
fn an_existing_via_is_extended() {
    let parsed = request("GET http://a.example/ HTTP/1.1\r\nVia: 1.1 other\r\n\r\n");
    let head = String::from_utf8(parsed.encode()).unwrap();
    assert!(head.contains("\r\nVia: 1.1 other, 1.1 fyntr\r\n"), "{head}");
    assert_eq!(head.matches("Via").count(), 1);
}

#[test]
fn bodies_are_framed_by_length_or_chunks() {
    let parsed = request("POST http://a.example/ HTTP/1.1\r\nContent-Length: 12\r\n\r\n");
    assert_eq!(parsed.body, Body::Length(12));
    let parsed = request("POST http://a.example/ HTTP/1.1\r\nContent-Length: 12, 12\r\n\r\n");
    assert_eq!(parsed.body, Body::Length(12));
    let parsed = request("POST http://a.example/ HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n");
    assert_eq!(parsed.body, Body::Chunked);
    let head = String::from_utf8(parsed.encode()).unwrap();
    assert!(head.contains("Transfer-Encoding: Chunked\r\n"), "{head}");
}

#[test]
fn ambiguous_framing_is_refused() {
    let both = "POST http://a.example/ HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(refused(both).status(), Status::BadRequest);
    let differing =
        "POST http://a.example/ HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
    assert_eq!(refused(differing).status(), Status::BadRequest);
    let listed = "POST http://a.example/ HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n";
    assert_eq!(refused(listed).status(), Status::BadRequest);
    let signed = "POST http://a.example/ HTTP/1.1\r\nContent-Length: +5\r\n\r\n";
    assert_eq!(refused(signed).status(), Status::BadRequest);
    let gzip = "POST http://a.example/ HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    assert_eq!(refused(gzip).status(), Status::NotImplemented);
    let twice = "POST http://a.example/ HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n";
    assert_eq!(refused(twice).status(), Status::NotImplemented);
}

#[test]
fn only_http_urls_are_forwarded() {
    assert!(matches!(
        refused("GET /index.html HTTP/1.1\r\n\r\n"),
        HttpError::NotAbsolute(_)
    ));
    assert_eq!(
        refused("GET https://a.example/ HTTP/1.1\r\n\r\n").status(),
        Status::BadRequest
    );
    assert_eq!(
        refused("GET http://user@a.example/ HTTP/1.1\r\n\r\n").status(),
        Status::BadRequest
    );
    assert_eq!(
        refused("GET http://a.example:0/ HTTP/1.1\r\n\r\n").status(),
        Status::BadRequest
    );
}

fn response(text: &str, for_head: bool) -> Response {
    match parse_response(text.as_bytes(), for_head) {
        Ok(Parse::Complete { value, .. }) => value,
        other => panic!("{other:?}"),
    }
}

#[test]
fn responses_without_bodies() {
    for status in ["204 No Content", "304 Not Modified", "100 Continue"] {
        let parsed = response(
            &format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n"),
            false,
        );
        assert_eq!(parsed.body, Body::Empty, "{status}");
    }
    let head = response("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true);
    assert_eq!(head.body, Body::Empty);
    let interim = response("HTTP/1.1 100 Continue\r\n\r\n", false);
    assert!(interim.is_interim());
}

#[test]
fn a_response_without_length_runs_until_close() {
    let parsed = response("HTTP/1.0 200 OK\r\n\r\n", false);
    assert_eq!(parsed.body, Body::UntilClose);
    assert!(!parsed.keep_alive);
    let parsed = response(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        false,
    );
    assert_eq!(parsed.body, Body::Chunked);
    let head = String::from_utf8(parsed.encode(false, false)).unwrap();
    assert!(!head.contains("Content-Length"), "{head}");
}

#[test]
fn a_closing_response_says_so() {
    let parsed = response(
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        false,
    );
    assert!(!parsed.keep_alive);
    let head = String::from_utf8(parsed.encode(true, false)).unwrap();
    assert!(
        head.ends_with("Via: 1.1 fyntr\r\nConnection: close\r\n\r\n"),
        "{head}"
    );
    let kept = response("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false);
    let head = String::from_utf8(kept.encode(false, true)).unwrap();
    assert!(head.contains("\r\nConnection: keep-alive\r\n"), "{head}");
    assert!(!String::from_utf8(kept.encode(false, false))
        .unwrap()
        .contains("Connection"));
}

#[test]
fn chunked_bodies_end_where_they_end() {
    let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    let mut chunked = ChunkedBody::default();
    let used = chunked.advance(body).unwrap();
    assert_eq!(&body[used..], b"NEXT");
    assert!(chunked.is_done());
    // Byte by byte, the same.
    let mut chunked = ChunkedBody::default();
    let mut used = 0;
    for byte in body.iter() {
        if chunked.is_done() {
            break;
        }
        used += chunked.advance(std::slice::from_ref(byte)).unwrap();
    }
    assert_eq!(&body[used..], b"NEXT");
}

#[test]
fn bad_chunks_are_refused() {
    for body in [
        &b"x\r\n"[..],
        b"-1\r\n",
        b"5\r\nhello!!\r\n",
        b"1234567890123456\r\n",
        b"\r\n",
    ] {
        let mut chunked = ChunkedBody::default();
        assert!(
            chunked.advance(body).is_err(),
            "{:?}",
            String::from_utf8_lossy(body)
        );
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_request(&bytes);
        let _ = parse_response(&bytes, false);
        let mut chunked = ChunkedBody::default();
        if let Ok(used) = chunked.advance(&bytes) {
            prop_assert!(used <= bytes.len());
        }
    }

    #[test]
    fn a_complete_request_head_is_within_the_limits(
        path in "[a-z0-9/]{0,40}",
        value in "[ -~]{0,100}",
    ) {
        let text = format!("GET http://a.example/{path} HTTP/1.1\r\nX-Any: {value}\r\n\r\n");
        if let Ok(Parse::Complete { consumed, .. }) = parse_request(text.as_bytes()) {
            prop_assert_eq!(consumed, text.len());
            prop_assert!(consumed <= super::super::connect::MAX_HEAD);
        }
    }
}
