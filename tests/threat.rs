//! Threat feeds on the wire: `block` refuses (403 on CONNECT, reply 02 on SOCKS5), `warn` logs
//! and lets the request go on; names, their subdomains, IDNA forms, literal and resolved
//! addresses, ranges and hosts-file lines; the mixed-script warning. Both backends.

#![allow(missing_docs)]

mod common;

use std::path::PathBuf;

use common::*;

/// A feed file with `lines`, removed on drop.
struct Feed(PathBuf);

impl Feed {
    fn new(name: &str, lines: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "fyntr-feed-{}-{name}-{:?}.txt",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, lines).unwrap();
        Self(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn connect_status(proxy: &Proxy, target: &str) -> u16 {
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    status_of(&proxy.exchange(request.as_bytes()))
}

fn socks5_reply(proxy: &Proxy, request: &[u8]) -> Result<std::net::SocketAddr, u8> {
    proxy.socks5_request(request).1
}

on_each_backend! {
    fn block_refuses_listed_names_and_their_subdomains_on_both_front_ends(backend) {
        let feed = Feed::new("names", "||evil.example^\n0.0.0.0 tracker.example\nbücher.example\n");
        let proxy = Proxy::start(
            backend,
            &["--socks5-port", "0", "--threat-feed-file", feed.path(), "--threat-action", "block"],
        );
        for target in [
            "evil.example:443",
            "a.b.evil.example:443",
            "tracker.example:443",
            "xn--bcher-kva.example:443",
            "BÜCHER.example.:443",
        ] {
            assert_eq!(connect_status(&proxy, target), 403, "{target}");
        }
        assert_eq!(socks5_reply(&proxy, &socks5_domain_request(b"www.evil.example", 443)), Err(2));
        assert_eq!(
            socks5_reply(&proxy, &socks5_domain_request("BÜCHER.example.".as_bytes(), 443)),
            Err(2)
        );
        // The match is logged before the refusal: wait for both lines, not the first only.
        proxy.wait_for_log("matched=evil.example");
        let log = proxy.wait_for_log("blocked by threat feed");
        assert!(log.contains("threat_match=true action=\"block\""), "{log}");
        // A name that only ends the same way is not under the listed domain: it goes on to the
        // policy (port 80 is not allowed here, so 403 for that reason, without a match).
        assert_eq!(connect_status(&proxy, "notevil.example:80"), 403);
        let log = proxy.wait_for_log("port 80 is not allowed");
        assert!(!log.contains("matched=notevil"), "{log}");
    }

    fn literal_and_resolved_addresses_and_ranges_are_checked(backend) {
        let upstream = targets::echo();
        let port = upstream.port().to_string();
        let feed = Feed::new("addresses", "127.0.0.0/8\n");
        let proxy = Proxy::start(
            backend,
            &["--socks5-port", "0", "--allow-port", &port, "--threat-feed-file", feed.path(),
              "--threat-action", "block"],
        );
        assert_eq!(connect_status(&proxy, &format!("127.0.0.1:{port}")), 403);
        // localhost resolves to 127.0.0.1: its resolved address is in the listed range.
        assert_eq!(connect_status(&proxy, &format!("localhost:{port}")), 403);
        assert_eq!(socks5_reply(&proxy, &socks5_request(upstream)), Err(2));
        assert_eq!(socks5_reply(&proxy, &socks5_domain_request(b"localhost", upstream.port())), Err(2));
        proxy.wait_for_log("match_type=\"range\" matched=127.0.0.0/8");
    }

    fn warn_logs_the_match_and_the_tunnel_goes_on(backend) {
        let upstream = targets::echo();
        let port = upstream.port().to_string();
        let feed = Feed::new("warn", "127.0.0.1\nlocalhost\n");
        let proxy = Proxy::start(
            backend,
            &["--socks5-port", "0", "--allow-port", &port, "--threat-feed-file", feed.path()],
        );
        let stream = proxy.tunnel(&format!("localhost:{port}"));
        let data = payload(64 * 1024, 1);
        assert_eq!(send_and_receive(stream, data.clone()), data);
        let (stream, _) = proxy.socks5_tunnel(upstream);
        assert_eq!(send_and_receive(stream, data.clone()), data);
        let log = proxy.wait_for_log("match_type=\"ip\" matched=127.0.0.1");
        assert!(log.contains("action=\"warn\" match_type=\"domain\" matched=localhost"), "{log}");
        assert!(log.contains("threat feeds ready"), "{log}");
    }

    fn lookalike_names_are_warned_of_without_feeds(backend) {
        let proxy = Proxy::start(backend, &["--socks5-port", "0"]);
        // "pаypal" with a Cyrillic "а", sent as UTF-8 and as Punycode; port 80 is refused by
        // the policy after the warning, so nothing is resolved.
        assert_eq!(connect_status(&proxy, "pаypal.example:80"), 403);
        let log = proxy.wait_for_log("mixed_script=true");
        assert!(log.contains("label=pаypal"), "{log}");
        assert_eq!(socks5_reply(&proxy, &socks5_domain_request("gοogle.example".as_bytes(), 80)), Err(2));
        proxy.wait_for_log("label=gοogle");
        assert_eq!(connect_status(&proxy, "paypal.example:80"), 403);
        let log = proxy.wait_for_log("target=paypal.example:80");
        assert_eq!(log.matches("mixed_script=true").count(), 2, "{log}");
    }
}
