//! Small helpers over header values: comma-separated token lists, whitespace, names.

/// Strips optional whitespace (SP and HTAB, RFC 7230 `OWS`) from both ends.
pub(crate) fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// Iterates the non-empty elements of a comma-separated list (`#token` in RFC 7230).
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// Whether the comma-separated `value` contains `token`, ignoring ASCII case.
pub(crate) fn has_token_ignore_case(value: &[u8], token: &[u8]) -> bool {
    list_elements(value).any(|e| e.eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_spaces_and_tabs_only() {
        assert_eq!(trim_ows(b" \t13\t "), b"13");
        assert_eq!(trim_ows(b"   "), b"");
        assert_eq!(trim_ows(b"a b"), b"a b");
    }

    #[test]
    fn finds_tokens_in_lists() {
        assert!(has_token_ignore_case(b"keep-alive, Upgrade", b"upgrade"));
        assert!(has_token_ignore_case(b"UPGRADE", b"upgrade"));
        assert!(!has_token_ignore_case(b"keep-alive,upgraded", b"upgrade"));
        assert_eq!(
            list_elements(b" chat,, superchat ,").collect::<Vec<_>>(),
            [&b"chat"[..], b"superchat"]
        );
        assert_eq!(list_elements(b",,").count(), 0);
    }
}
