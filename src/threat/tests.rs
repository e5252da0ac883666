use super::*;

fn indexed(text: &str) -> (ThreatIndex, FeedCounts) {
    let mut index = ThreatIndex::default();
    let counts = index.add_feed(text);
    (index, counts)
}

fn domain(name: &str) -> proto::Host {
    proto::Host::Domain(name.into())
}

fn ip(text: &str) -> proto::Host {
    proto::Host::Ip(text.parse().unwrap())
}

#[test]
fn loads_adguard_domain_and_ip_entries() {
    let (index, counts) =
        indexed("||evil.example^\nbad.example\n203.0.113.10\n! comment\n# comment\n\n");
    assert_eq!(
        counts,
        FeedCounts {
            domains: 2,
            ips: 1,
            ranges: 0,
            skipped: 0
        }
    );
    assert!(index.match_host(&domain("evil.example")).is_some());
    assert!(index.match_host(&domain("bad.example")).is_some());
    assert_eq!(
        index.match_host(&ip("203.0.113.10")),
        Some(ThreatMatch::Ip("203.0.113.10".parse().unwrap()))
    );
}

#[test]
fn skips_unsupported_rules_without_failing() {
    let (index, counts) = indexed(
        "@@||good.example^\n||ads.example^$third-party\n||noanchor.example\n||x.example^extra\n\
         example.com/path\n*.wild.example\n[Adblock Plus 2.0]\n.leading.example\n_x.example\n",
    );
    // `_x.example` is a valid name here (fyntr's CONNECT accepts `_` too).
    assert_eq!(counts.domains, 1);
    assert_eq!(counts.skipped, 8);
    assert!(index.match_host(&domain("good.example")).is_none());
    assert!(index.match_host(&domain("ads.example")).is_none());
}

#[test]
fn a_domain_matches_itself_and_its_subdomains_only() {
    let (index, _) = indexed("evil.example\n");
    assert_eq!(
        index.match_domain("a.b.evil.example"),
        Some(ThreatMatch::Domain("evil.example".into()))
    );
    assert!(index.match_domain("evil.example.").is_some());
    assert!(index.match_domain("notevil.example").is_none());
    assert!(index.match_domain("example").is_none());
}

#[test]
fn international_entries_and_requests_meet_in_ascii() {
    let (index, counts) = indexed("BÜCHER.de.\n");
    assert_eq!(counts.domains, 1);
    assert!(index.match_domain("xn--bcher-kva.de").is_some());
    assert!(index.match_domain("shop.xn--bcher-kva.de").is_some());
}

#[test]
fn entries_are_lowercased_and_trailing_dots_dropped() {
    let (index, _) = indexed("Evil.Example...\n");
    assert!(index.match_domain("evil.example").is_some());
}

#[test]
fn hosts_file_lines_block_their_names() {
    let (index, counts) = indexed(
        "127.0.0.1 localhost\n0.0.0.0 evil.example tracker.example # ads\n\
         ::1 ip6-localhost-evil.example\n203.0.113.5 mapped.example\n",
    );
    assert_eq!(counts.domains, 3);
    assert_eq!(
        counts.skipped, 1,
        "a name mapped to a real address is not an entry"
    );
    assert!(index.match_domain("evil.example").is_some());
    assert!(index.match_domain("tracker.example").is_some());
    assert!(index.match_domain("localhost").is_none());
    assert!(index.match_domain("mapped.example").is_none());
}

#[test]
fn cidr_lines_match_every_address_inside() {
    let (index, counts) =
        indexed("198.51.100.0/24\n2001:db8::/32\n::ffff:192.0.2.0/120\n10.0.0.1/40\n");
    assert_eq!(counts.ranges, 3);
    assert_eq!(counts.skipped, 1);
    assert_eq!(
        index.match_ip("198.51.100.77".parse().unwrap()),
        Some(ThreatMatch::Range("198.51.100.0/24".parse().unwrap()))
    );
    assert!(index.match_ip("198.51.101.1".parse().unwrap()).is_none());
    assert!(index.match_ip("2001:db8:1::5".parse().unwrap()).is_some());
    assert!(index.match_ip("192.0.2.9".parse().unwrap()).is_some());
    assert!(index
        .match_ip("::ffff:198.51.100.1".parse().unwrap())
        .is_some());
}

#[test]
fn ipv4_mapped_addresses_match_as_ipv4() {
    let (index, _) = indexed("::ffff:203.0.113.10\n");
    assert!(index.match_ip("203.0.113.10".parse().unwrap()).is_some());
    let (index, _) = indexed("203.0.113.10\n");
    assert!(index
        .match_ip("::ffff:203.0.113.10".parse().unwrap())
        .is_some());
}

#[test]
fn ipv6_loopback_stays_ipv6() {
    let (index, _) = indexed("::1\n");
    assert!(index.match_ip("::1".parse().unwrap()).is_some());
    assert!(index.match_ip("0.0.0.1".parse().unwrap()).is_none());
}

#[test]
fn names_and_addresses_are_not_confused() {
    let (index, _) = indexed("203.0.113.10\n");
    assert!(index.match_domain("203.0.113.10").is_none());
    let (index, _) = indexed("evil.example\n");
    assert!(index.match_ip("203.0.113.10".parse().unwrap()).is_none());
}

#[test]
fn merges_files_and_refuses_an_empty_merge() {
    let dir = std::env::temp_dir().join(format!("fyntr-threat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let first = dir.join("first.txt");
    let empty = dir.join("empty.txt");
    std::fs::write(&first, "evil.example\n").unwrap();
    std::fs::write(&empty, "# nothing\n").unwrap();
    let (index, counts) = ThreatIndex::load(&[first.clone(), empty.clone()]).unwrap();
    assert_eq!(counts.len(), 2);
    assert!(index.match_domain("evil.example").is_some());
    assert!(matches!(
        ThreatIndex::load(std::slice::from_ref(&empty)),
        Err(FeedError::Empty(_))
    ));
    let missing = dir.join("missing.txt");
    let error = ThreatIndex::load(&[missing]).unwrap_err();
    assert!(error.to_string().contains("missing.txt"), "{error}");
    assert!(ThreatIndex::load(std::slice::from_ref(&dir)).is_err());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn mixed_script_labels_are_found() {
    // Latin with a Cyrillic "а".
    let cyrillic = proto::idna::to_ascii("pаypal.example").unwrap();
    assert_eq!(mixed_script_label(&cyrillic).as_deref(), Some("pаypal"));
    // Latin with a Greek omicron.
    let greek = proto::idna::to_ascii("gοogle.example").unwrap();
    assert!(mixed_script_label(&greek).is_some());
    assert!(mixed_script_label("paypal.example").is_none());
    assert!(mixed_script_label(&proto::idna::to_ascii("bücher.de").unwrap()).is_none());
    // Scripts in separate labels do not mix.
    assert!(mixed_script_label(&proto::idna::to_ascii("пример.example").unwrap()).is_none());
    // Other scripts are not counted.
    assert!(mixed_script_label(&proto::idna::to_ascii("a中文.example").unwrap()).is_none());
}

#[test]
fn many_entries_load_and_look_up_by_hashing() {
    let mut feed = String::with_capacity(30 << 20);
    for n in 0..200_000u32 {
        feed.push_str(&format!("host{n}.feed.example\n"));
    }
    let (index, counts) = indexed(&feed);
    assert_eq!(counts.domains, 200_000);
    assert!(index.match_domain("a.host199999.feed.example").is_some());
    assert!(index.match_domain("host200000.feed.example").is_none());
}
