//! Host names as DNS sees them: UTS #46 mapping (lowercase, width and compatibility forms)
//! and Punycode for non-ASCII labels, through the `idna` crate of the `url` project.

/// `name` in its ASCII form (`BÜCHER.de` -> `xn--bcher-kva.de`), or `None` when it is not a
/// valid internationalised name. ASCII names come back lowercased.
pub fn to_ascii(name: &str) -> Option<String> {
    if name.is_ascii() {
        return Some(name.to_ascii_lowercase());
    }
    idna::domain_to_ascii(name).ok()
}
