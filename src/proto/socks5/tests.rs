use proptest::prelude::*;

use super::*;

fn request(address: &[u8], port: u16) -> Vec<u8> {
    let mut bytes = vec![5, 1, 0];
    bytes.extend_from_slice(address);
    bytes.extend_from_slice(&port.to_be_bytes());
    bytes
}

fn domain(name: &[u8]) -> Vec<u8> {
    let mut address = vec![ATYP_DOMAIN, name.len() as u8];
    address.extend_from_slice(name);
    address
}

fn target(received: &[u8]) -> Result<Target, RequestError> {
    match parse_request(received)? {
        Parse::Complete { value, consumed } => {
            assert_eq!(consumed, received.len());
            Ok(value)
        }
        Parse::Partial => panic!("partial: {received:?}"),
    }
}

#[test]
fn a_greeting_offering_no_authentication_anywhere_is_accepted() {
    for methods in [&[0u8][..], &[2, 0], &[1, 2, 0, 3]] {
        let mut greeting = vec![5, methods.len() as u8];
        greeting.extend_from_slice(methods);
        greeting.extend_from_slice(b"next");
        assert_eq!(
            parse_greeting(&greeting),
            Ok(Parse::Complete {
                value: (),
                consumed: 2 + methods.len()
            })
        );
    }
}

#[test]
fn a_greeting_without_no_authentication_is_refused() {
    assert_eq!(
        parse_greeting(&[5, 1, 2]),
        Err(GreetingError::NoAcceptableMethod)
    );
    assert_eq!(
        parse_greeting(&[5, 0]),
        Err(GreetingError::NoAcceptableMethod)
    );
}

#[test]
fn other_versions_are_refused_at_the_first_byte() {
    assert_eq!(parse_greeting(&[4]), Err(GreetingError::NotSocks5(4)));
    assert_eq!(
        parse_greeting(b"CONNECT"),
        Err(GreetingError::NotSocks5(b'C'))
    );
}

#[test]
fn partial_greetings_ask_for_more() {
    for partial in [&[][..], &[5], &[5, 2], &[5, 2, 1]] {
        assert_eq!(parse_greeting(partial), Ok(Parse::Partial));
    }
}

#[test]
fn ipv4_ipv6_and_domain_targets_parse() {
    assert_eq!(
        target(&request(&[ATYP_IPV4, 192, 0, 2, 1], 443)),
        Ok(Target {
            host: Host::Ip("192.0.2.1".parse().unwrap()),
            port: 443
        })
    );
    let mut v6 = vec![ATYP_IPV6];
    v6.extend_from_slice(&"::1".parse::<Ipv6Addr>().unwrap().octets());
    assert_eq!(
        target(&request(&v6, 8443)),
        Ok(Target {
            host: Host::Ip("::1".parse().unwrap()),
            port: 8443
        })
    );
    assert_eq!(
        target(&request(&domain(b"Example.COM."), 443)),
        Ok(Target {
            host: Host::Domain("example.com".into()),
            port: 443
        })
    );
}

#[test]
fn an_ipv4_mapped_ipv6_target_is_the_ipv4_host() {
    let mut mapped = vec![ATYP_IPV6];
    mapped.extend_from_slice(&"::ffff:127.0.0.1".parse::<Ipv6Addr>().unwrap().octets());
    assert_eq!(
        target(&request(&mapped, 443)).unwrap().host,
        Host::Ip("127.0.0.1".parse().unwrap())
    );
}

#[test]
fn international_names_are_mapped_to_ascii() {
    assert_eq!(
        target(&request(&domain("BÜCHER.de.".as_bytes()), 443))
            .unwrap()
            .host,
        Host::Domain("xn--bcher-kva.de".into())
    );
}

#[test]
fn numeric_looking_names_are_refused() {
    for name in [
        "127.1",
        "2130706433",
        "0x7f000001",
        "017700000001",
        "0x7f.1",
        "8.8.8.8",
        "8.8.8.8.",
        "１２７．０．０．１",
    ] {
        assert_eq!(
            target(&request(&domain(name.as_bytes()), 443))
                .unwrap_err()
                .reply(),
            Reply::AddressTypeNotSupported,
            "{name}"
        );
    }
}

#[test]
fn malformed_names_are_refused() {
    for name in [
        &b""[..],
        b" x",
        b"x ",
        b"[x]",
        b"a..b",
        b"x..",
        b"..",
        b"...",
        b"\xff",
        b"a/b",
        b"-a.example",
    ] {
        assert_eq!(
            target(&request(&domain(name), 443)).unwrap_err().reply(),
            Reply::AddressTypeNotSupported,
            "{name:?}"
        );
    }
}

#[test]
fn the_header_is_checked_in_order_before_the_address() {
    assert_eq!(parse_request(&[4]), Err(RequestError::BadVersion(4)));
    assert_eq!(
        parse_request(&[5, 2]).unwrap_err().reply(),
        Reply::CommandNotSupported
    );
    assert_eq!(
        parse_request(&[5, 3, 1]).unwrap_err().reply(),
        Reply::CommandNotSupported
    );
    assert_eq!(
        parse_request(&[5, 1, 1]).unwrap_err().reply(),
        Reply::GeneralFailure
    );
    assert_eq!(
        parse_request(&[5, 1, 0, 9]).unwrap_err().reply(),
        Reply::AddressTypeNotSupported
    );
    assert_eq!(
        parse_request(&request(&[ATYP_IPV4, 1, 2, 3, 4], 0))
            .unwrap_err()
            .reply(),
        Reply::GeneralFailure
    );
}

#[test]
fn bytes_after_the_request_are_left_for_the_tunnel() {
    let mut bytes = request(&[ATYP_IPV4, 192, 0, 2, 1], 443);
    let length = bytes.len();
    bytes.extend_from_slice(b"\x16\x03\x01 hello");
    assert_eq!(
        parse_request(&bytes),
        Ok(Parse::Complete {
            value: Target {
                host: Host::Ip("192.0.2.1".parse().unwrap()),
                port: 443
            },
            consumed: length
        })
    );
}

#[test]
fn replies_carry_the_bound_address() {
    assert_eq!(
        Reply::Succeeded.encode(Some("192.0.2.7:4711".parse().unwrap())),
        [5, 0, 0, 1, 192, 0, 2, 7, 0x12, 0x67]
    );
    let v6 = Reply::Succeeded.encode(Some("[2001:db8::1]:443".parse().unwrap()));
    assert_eq!(v6.len(), 22);
    assert_eq!(&v6[..4], [5, 0, 0, 4]);
    assert_eq!(
        Reply::NotAllowed.encode(None),
        [5, 2, 0, 1, 0, 0, 0, 0, 0, 0]
    );
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_every_prefix_of_a_request_is_partial(
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        let _ = parse_greeting(&bytes);
        if let Ok(Parse::Complete { consumed, .. }) = parse_request(&bytes) {
            prop_assert!(consumed <= bytes.len());
            prop_assert!(consumed <= 4 + 1 + 255 + 2);
            for cut in 0..consumed {
                prop_assert_eq!(parse_request(&bytes[..cut]), Ok(Parse::Partial));
            }
        }
    }
}
