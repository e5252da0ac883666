//! The byte units of every size and rate fyntr reads, one convention for all of them (the one
//! `tc` uses for rates): SI prefixes are powers of 1000 (`KB`, `MB`, `GB`, and the bare `k`,
//! `m`, `g`), binary prefixes powers of 1024 (`KiB`, `MiB`, `GiB`). Case does not matter.

/// Bytes in one `unit` (`""` and `B` are bytes); `None` for anything else.
pub fn bytes_in(unit: &str) -> Option<f64> {
    let bytes = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "m" | "mb" => 1e6,
        "g" | "gb" => 1e9,
        "kib" => 1024.0,
        "mib" => 1024.0 * 1024.0,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(bytes)
}

/// Bytes in one `unit` of bits per second (`bit`, `kbit`, `mbit`, `gbit`, powers of 1000).
pub fn bytes_in_bits(unit: &str) -> Option<f64> {
    let bits = match unit.trim().to_ascii_lowercase().as_str() {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => return None,
    };
    Some(bits / 8.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_prefixes_are_powers_of_1000_and_binary_ones_of_1024() {
        assert_eq!(bytes_in("KB"), Some(1e3));
        assert_eq!(bytes_in("k"), Some(1e3));
        assert_eq!(bytes_in("KiB"), Some(1024.0));
        assert_eq!(bytes_in("mib"), Some(1048576.0));
        assert_eq!(bytes_in("MB"), Some(1e6));
        assert_eq!(bytes_in_bits("Mbit"), Some(1e6 / 8.0));
        assert_eq!(bytes_in("bit"), None);
        assert_eq!(bytes_in_bits("MB"), None);
    }
}
