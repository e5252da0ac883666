//! Threat feeds: lists of hostile domains and addresses that requests are checked against
//! (`--threat-feed-file`, `--threat-action warn|block`).
//!
//! A feed is text, one entry per line. Accepted, as fyntr 0.4.8 accepts them: a domain name or
//! an IP address on its own, and AdGuard/Adblock network rules `||host^`. Beyond 0.4.8, the two
//! other forms lists come in: hosts-file lines (`0.0.0.0 evil.example`, several names per line,
//! a trailing `# comment`) and CIDR ranges (`203.0.113.0/24`). Blank lines and lines starting
//! with `!` or `#` are comments. Anything else (exceptions `@@`, rules with `$` options, paths,
//! wildcards) is skipped and counted, never applied half-understood.
//!
//! A domain entry matches itself and every name under it (`evil.example` matches
//! `a.b.evil.example`, not `notevil.example`). Names are compared in their IDNA ASCII form, so
//! `bücher.de` in a feed matches a request for `xn--bcher-kva.de` and the other way round.
//! Lookups cost one hash probe per label of the name, and per prefix length present among the
//! ranges, whatever the size of the feeds.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use thiserror::Error;

use crate::{policy::canonical_ip, proto};

/// What a match does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ThreatAction {
    /// Log the match; the request goes on.
    #[default]
    Warn,
    /// Log the match and refuse the request (403; SOCKS5 reply 02).
    Block,
}

impl ThreatAction {
    /// The name logs and the command line use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Warn => "warn",
            Self::Block => "block",
        }
    }
}

/// What a request matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ThreatMatch {
    /// A domain entry (the entry, which is the name or one of its parents).
    Domain(String),
    /// An address entry.
    Ip(IpAddr),
    /// A range entry.
    Range(IpNet),
}

impl std::fmt::Display for ThreatMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Domain(name) => write!(f, "domain {name}"),
            Self::Ip(ip) => write!(f, "ip {ip}"),
            Self::Range(range) => write!(f, "range {range}"),
        }
    }
}

/// Counts of one feed's entries, for the load log line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedCounts {
    /// Domain entries (each distinct once).
    pub domains: usize,
    /// Address entries.
    pub ips: usize,
    /// Range entries.
    pub ranges: usize,
    /// Lines skipped as unsupported.
    pub skipped: usize,
}

/// Why feeds could not be loaded.
#[derive(Debug, Error)]
pub enum FeedError {
    /// A file could not be read (missing, a directory, not UTF-8, no permission).
    #[error("threat feed file {path}: {source}")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Every file together held no entry fyntr can apply.
    #[error("threat feeds contain no supported entries (files: {0})")]
    Empty(String),
}

/// The merged, immutable index of every feed.
#[derive(Debug, Default)]
pub struct ThreatIndex {
    domains: HashSet<Box<str>>,
    ips: HashSet<IpAddr>,
    /// Ranges by prefix length, each keyed by its network address.
    ranges: HashMap<(bool, u8), HashSet<IpAddr>>,
}

impl ThreatIndex {
    /// Reads and merges `paths`; each file's counts are returned beside the index, in order.
    pub fn load(paths: &[PathBuf]) -> Result<(ThreatIndex, Vec<FeedCounts>), FeedError> {
        let mut index = ThreatIndex::default();
        let mut counts = Vec::with_capacity(paths.len());
        for path in paths {
            let text = read(path)?;
            counts.push(index.add_feed(&text));
        }
        if index.is_empty() {
            let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            return Err(FeedError::Empty(names.join(", ")));
        }
        Ok((index, counts))
    }

    /// Adds every entry of one feed's text; returns what it held.
    pub fn add_feed(&mut self, text: &str) -> FeedCounts {
        let mut counts = FeedCounts::default();
        for line in text.lines() {
            match parse_line(line) {
                Line::Comment => {}
                Line::Skipped => counts.skipped += 1,
                Line::Entries(entries) => {
                    for entry in entries {
                        match entry {
                            Entry::Domain(name) => {
                                counts.domains += usize::from(self.domains.insert(name.into()));
                            }
                            Entry::Ip(ip) => counts.ips += usize::from(self.ips.insert(ip)),
                            Entry::Range(range) => {
                                let key = (range.addr().is_ipv4(), range.prefix_len());
                                counts.ranges += usize::from(
                                    self.ranges.entry(key).or_default().insert(range.network()),
                                );
                            }
                        }
                    }
                }
            }
        }
        counts
    }

    /// Whether no entry was loaded.
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty() && self.ips.is_empty() && self.ranges.is_empty()
    }

    /// Entry counts of the whole index.
    pub fn counts(&self) -> FeedCounts {
        FeedCounts {
            domains: self.domains.len(),
            ips: self.ips.len(),
            ranges: self.ranges.values().map(HashSet::len).sum(),
            skipped: 0,
        }
    }

    /// The entry a requested host matches: a name (lowercase ASCII, as the parsers give it)
    /// against the domain entries, an address against the address and range entries.
    pub fn match_host(&self, host: &proto::Host) -> Option<ThreatMatch> {
        match host {
            proto::Host::Domain(name) => self.match_domain(name),
            proto::Host::Ip(ip) => self.match_ip(*ip),
        }
    }

    /// The domain entry `name` (lowercase ASCII) or one of its parents matches.
    pub fn match_domain(&self, name: &str) -> Option<ThreatMatch> {
        let name = name.trim_end_matches('.');
        let mut rest = name;
        loop {
            if self.domains.contains(rest) {
                return Some(ThreatMatch::Domain(rest.to_string()));
            }
            rest = rest.split_once('.')?.1;
        }
    }

    /// The address or range entry `ip` matches.
    pub fn match_ip(&self, ip: IpAddr) -> Option<ThreatMatch> {
        let ip = canonical_ip(ip);
        if self.ips.contains(&ip) {
            return Some(ThreatMatch::Ip(ip));
        }
        self.ranges.iter().find_map(|(&(v4, prefix), networks)| {
            if v4 != ip.is_ipv4() {
                return None;
            }
            let range = IpNet::new(ip, prefix).ok()?.trunc();
            networks
                .contains(&range.network())
                .then_some(ThreatMatch::Range(range))
        })
    }
}

/// Scripts that look alike (homoglyphs) and are worth a warning when one label mixes them.
const CONFUSABLE_SCRIPTS: [unicode_script::Script; 3] = [
    unicode_script::Script::Latin,
    unicode_script::Script::Cyrillic,
    unicode_script::Script::Greek,
];

/// The first label of `name` (lowercase ASCII, Punycode for international labels) that mixes
/// two or more of Latin, Cyrillic and Greek, in its Unicode form: `pаypal` with a Cyrillic `а`
/// is the classic lookalike. Only international labels can mix scripts; other scripts are not
/// counted.
pub fn mixed_script_label(name: &str) -> Option<String> {
    use unicode_script::UnicodeScript;
    name.split('.')
        .filter(|label| label.starts_with("xn--"))
        .find_map(|label| {
            let (unicode, decoded) = idna::domain_to_unicode(label);
            decoded.ok()?;
            let mut seen = [false; CONFUSABLE_SCRIPTS.len()];
            for character in unicode.chars() {
                let script = character.script();
                if let Some(at) = CONFUSABLE_SCRIPTS.iter().position(|s| *s == script) {
                    seen[at] = true;
                }
            }
            (seen.iter().filter(|seen| **seen).count() >= 2).then_some(unicode)
        })
}

fn read(path: &Path) -> Result<String, FeedError> {
    std::fs::read_to_string(path).map_err(|source| FeedError::Unreadable {
        path: path.to_path_buf(),
        source,
    })
}

/// One entry of a feed.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    Domain(String),
    Ip(IpAddr),
    Range(IpNet),
}

/// What one line of a feed is.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Comment,
    Skipped,
    Entries(Vec<Entry>),
}

/// Addresses hosts files point blocked names at.
fn is_sinkhole(ip: IpAddr) -> bool {
    ip.is_unspecified() || ip.is_loopback()
}

fn parse_line(line: &str) -> Line {
    let line = line.trim();
    if line.is_empty() || line.starts_with('!') || line.starts_with('#') {
        return Line::Comment;
    }
    if line.starts_with("@@") || line.contains('$') {
        return Line::Skipped;
    }
    if let Some(rule) = line.strip_prefix("||") {
        // `||host^` and nothing after the `^`.
        return match rule.split_once('^') {
            Some((host, "")) => one(entry(host)),
            _ => Line::Skipped,
        };
    }
    // Hosts-file form: an address, then one or more names, then perhaps a comment.
    let content = line
        .split_once('#')
        .map_or(line, |(content, _)| content)
        .trim();
    let mut fields = content.split_whitespace();
    let first = fields.next().unwrap_or_default();
    let names: Vec<&str> = fields.collect();
    if !names.is_empty() {
        let Some(ip) = parse_ip(first) else {
            return Line::Skipped;
        };
        if !is_sinkhole(ip) {
            // `203.0.113.9 name` maps a name to an address; it says nothing hostile.
            return Line::Skipped;
        }
        let entries: Option<Vec<Entry>> = names
            .iter()
            .filter(|name| !matches!(**name, "localhost" | "localhost.localdomain" | "local"))
            .map(|name| match entry(name) {
                Some(Entry::Domain(name)) => Some(Entry::Domain(name)),
                _ => None,
            })
            .collect();
        return match entries {
            Some(entries) if !entries.is_empty() => Line::Entries(entries),
            Some(_) => Line::Comment,
            None => Line::Skipped,
        };
    }
    if let Some((address, prefix)) = first.split_once('/') {
        return one(parse_range(address, prefix).map(Entry::Range));
    }
    if first.contains(['*', '^', '/']) {
        return Line::Skipped;
    }
    one(entry(first))
}

/// `address/prefix` as a range; an IPv4-mapped IPv6 range (`::ffff:192.0.2.0/120`) is the
/// IPv4 range it carries.
fn parse_range(address: &str, prefix: &str) -> Option<IpNet> {
    let ip: IpAddr = address.parse().ok()?;
    let prefix: u8 = prefix.parse().ok()?;
    let range = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) if prefix >= 96 => IpNet::new(IpAddr::V4(v4), prefix - 96).ok()?,
            Some(_) => return None,
            None => IpNet::new(ip, prefix).ok()?,
        },
        IpAddr::V4(_) => IpNet::new(ip, prefix).ok()?,
    };
    Some(range.trunc())
}

fn one(entry: Option<Entry>) -> Line {
    entry.map_or(Line::Skipped, |entry| Line::Entries(vec![entry]))
}

fn parse_ip(text: &str) -> Option<IpAddr> {
    let text = text
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(text);
    text.parse::<IpAddr>().ok().map(canonical_ip)
}

/// A domain or address entry, normalised, from one field.
fn entry(text: &str) -> Option<Entry> {
    let text = text.trim();
    if let Some(ip) = parse_ip(text) {
        return Some(Entry::Ip(ip));
    }
    let text = text.trim_end_matches('.');
    if text.starts_with('.') {
        return None;
    }
    let ascii = proto::idna::to_ascii(text)?;
    proto::connect::parse_domain_name(&ascii)
        .ok()
        .map(Entry::Domain)
}

#[cfg(test)]
mod tests;
