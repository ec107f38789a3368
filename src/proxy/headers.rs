//! Header rules applied on every hop: hop-by-hop headers removed in both
//! directions, forwarding headers set on the way in.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that only ever concern one hop (RFC 9110 7.6.1, plus the
/// historical ones proxies are expected to drop); `Connection` first.
fn fixed_hop_by_hop() -> [&'static HeaderName; 9] {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
}

/// Whether any `Connection` header lists `token` (case-insensitive).
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

/// The tokens every `Connection` field lists. Unlike [`tokens`], a value
/// with bytes beyond ASCII still gives its ASCII tokens: what it lists is
/// removed, and its `close` honoured, whatever else it holds.
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| ValueTokens {
            rest: value.as_bytes(),
        })
}

/// The comma-separated tokens of every value of `name`.
pub fn tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers.get_all(name).iter().flat_map(value_tokens)
}

/// The comma-separated tokens of one value (none when it is not visible
/// ASCII), without the spaces and tabs around them.
pub fn value_tokens(value: &HeaderValue) -> ValueTokens<'_> {
    ValueTokens {
        rest: value.to_str().unwrap_or_default().as_bytes(),
    }
}

/// The iterator of [`value_tokens`]: a walk over the bytes. The general
/// `split`, `trim` and `filter` chain it replaces (a char searcher and
/// Unicode whitespace for what is only ASCII) cost several hundred
/// instructions for an upgrade's short `Connection` and `Upgrade` values.
/// Tokens with bytes beyond ASCII are passed over: no field name or
/// protocol has them.
pub struct ValueTokens<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ValueTokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        loop {
            if self.rest.is_empty() {
                return None;
            }
            let (item, rest) = match self.rest.iter().position(|&b| b == b',') {
                Some(comma) => (&self.rest[..comma], &self.rest[comma + 1..]),
                None => (self.rest, &[][..]),
            };
            self.rest = rest;
            // A value has no control characters but tabs, so the ASCII
            // whitespace trimmed is the spaces and tabs.
            let token = item.trim_ascii();
            if !token.is_empty() && token.is_ascii() {
                return Some(std::str::from_utf8(token).expect("ASCII is UTF-8"));
            }
        }
    }
}

/// Removes hop-by-hop headers, including those `Connection` names. A
/// `Connection` header cannot make us drop `Host`, the body framing the
/// next hop depends on, or the `X-Request-Id` the proxy keeps for the
/// backend, the response and the log alike.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Which of them are present, from one pass over the names: most
    // messages carry none, and a removal costs a hash and a probe each.
    let hop_by_hop = fixed_hop_by_hop();
    let mut present = [false; 9];
    // Whether a `Connection` value may list a field beyond the fixed ones.
    let mut lists_others = false;
    for (name, value) in headers.iter() {
        if let Some(i) = hop_by_hop.iter().position(|h| *h == name) {
            present[i] = true;
            if i == 0 {
                lists_others |= !names_only_fixed(value.as_bytes());
            }
        }
    }
    if present == [false; 9] {
        return;
    }
    // What `Connection` lists beyond those (`keep-alive` and `upgrade` are
    // among them): usually nothing, so usually no allocation.
    let listed: Vec<HeaderName> = if lists_others {
        connection_tokens(headers)
            .filter(|t| {
                !hop_by_hop
                    .iter()
                    .any(|h| h.as_str().eq_ignore_ascii_case(t))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .filter(|name| {
                *name != header::HOST && *name != header::CONTENT_LENGTH && *name != X_REQUEST_ID
            })
            .collect()
    } else {
        Vec::new()
    };
    for name in listed {
        headers.remove(name);
    }
    for (name, present) in hop_by_hop.into_iter().zip(present) {
        if present {
            headers.remove(name);
        }
    }
}

/// Leaves a `101`'s hop-by-hop fields as the client must get them:
/// `Connection: upgrade` and the `Upgrade` switched to, `protocol`, and
/// none of the backend's others (nor what its `Connection` lists). Most
/// backends send exactly those two (`Connection: Upgrade` and the one
/// protocol), and their head is left as it is: removing both and
/// inserting them again cost about 700 instructions per upgrade.
pub fn only_upgrade_hop_fields(headers: &mut HeaderMap, protocol: HeaderValue) {
    if has_only_upgrade_hop_fields(headers, &protocol) {
        return;
    }
    strip_hop_by_hop(headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Whether the hop-by-hop fields are one `Connection: upgrade` and one
/// `Upgrade: {protocol}`, and nothing else.
fn has_only_upgrade_hop_fields(headers: &HeaderMap, protocol: &HeaderValue) -> bool {
    let hop_by_hop = fixed_hop_by_hop();
    let (mut connection, mut upgrade) = (0, 0);
    for (name, value) in headers {
        if name == header::CONNECTION {
            if !value.as_bytes().eq_ignore_ascii_case(b"upgrade") {
                return false;
            }
            connection += 1;
        } else if name == header::UPGRADE {
            if value != protocol {
                return false;
            }
            upgrade += 1;
        } else if hop_by_hop.contains(&name) {
            return false;
        }
    }
    connection == 1 && upgrade == 1
}

/// Whether a `Connection` value is one of the two that browsers send on
/// every request.
fn names_no_upgrade(value: &[u8]) -> bool {
    value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"close")
}

/// Whether a `Connection` value is one that browsers, WebSocket clients
/// and backends send on almost every message and that is itself one of
/// the fixed hop-by-hop names, so that it names no other field to remove:
/// the general token walk for those cost about 600 instructions per
/// message. (`close` is not among them: a field named `close` that it
/// lists must go too, and only the walk removes it.)
fn names_only_fixed(value: &[u8]) -> bool {
    value.eq_ignore_ascii_case(b"keep-alive") || value.eq_ignore_ascii_case(b"upgrade")
}

/// Removes from a trailer section what may not be sent there (RFC 9110
/// 6.5.1: fields that frame, route, modify or authenticate the request, or
/// say how to process its content), the hop-by-hop fields, and those the
/// proxy sets itself. A backend that merges trailers into the head (some
/// frameworks do) would otherwise take a client's `X-Real-IP` or `Host`
/// sent after the body for the proxy's; what is left, checksums and the
/// like, is passed on. nginx and Envoy (by default) drop every request
/// trailer instead.
pub fn strip_from_trailers(trailers: &mut HeaderMap) {
    static NOT_IN_TRAILERS: [HeaderName; 19] = [
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::CONTENT_TYPE,
        header::CONTENT_RANGE,
        header::HOST,
        header::AUTHORIZATION,
        header::COOKIE,
        header::SET_COOKIE,
        header::CACHE_CONTROL,
        header::EXPECT,
        header::MAX_FORWARDS,
        header::PRAGMA,
        header::RANGE,
        header::IF_MATCH,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::FORWARDED,
    ];
    let proxy_set = [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_REAL_IP,
        &X_REQUEST_ID,
    ];
    for name in fixed_hop_by_hop()
        .into_iter()
        .chain(&NOT_IN_TRAILERS)
        .chain(proxy_set)
    {
        trailers.remove(name);
    }
}

/// A client address as the value of `X-Forwarded-For`; made once per
/// client connection, not per request.
pub fn forwarded_for(client: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = client else {
        return HeaderValue::try_from(client.to_string())
            .expect("an IP address is a valid header value");
    };
    // Dotted decimal by hand: the formatting machinery costs more than
    // the rest of a new connection's setup in this function (measured:
    // about 1,300 instructions against 100).
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let digits = [octet / 100, octet / 10 % 10, octet % 10];
        let skip = match octet {
            0..=9 => 2,
            10..=99 => 1,
            _ => 0,
        };
        for digit in &digits[skip..] {
            text[len] = b'0' + digit;
            len += 1;
        }
    }
    HeaderValue::from_bytes(&text[..len]).expect("digits and dots are a valid header value")
}

/// The request fields the pipeline decides on, found in one pass over the
/// head: a lookup each (`Host` twice, `Connection`, `Upgrade`,
/// `Transfer-Encoding`, `X-Request-Id`) hashed the name and probed the map
/// six times per request, about 700 instructions, where one pass over a
/// typical head compares a few names.
#[derive(Debug, Default)]
pub struct SeenFields {
    /// The first `Host` field, and how many there are (counted to two).
    pub host: Option<HeaderValue>,
    pub hosts: u8,
    /// Whether there is a `Connection` field other than a plain
    /// `keep-alive` or `close` (which browsers send on every request, and
    /// which ask for no upgrade), an `Upgrade` or a `Transfer-Encoding`
    /// field: each needs a closer look, and most requests have none.
    pub connection_may_upgrade: bool,
    pub upgrade: bool,
    pub transfer_encoding: bool,
    /// The first `X-Request-Id` field.
    pub request_id: Option<HeaderValue>,
}

impl SeenFields {
    pub fn of(headers: &HeaderMap) -> Self {
        let mut seen = Self::default();
        for (name, value) in headers {
            if *name == header::HOST {
                if seen.hosts == 0 {
                    seen.host = Some(value.clone());
                }
                seen.hosts = seen.hosts.saturating_add(1).min(2);
            } else if *name == header::CONNECTION {
                seen.connection_may_upgrade |= !names_no_upgrade(value.as_bytes());
            } else if *name == header::UPGRADE {
                seen.upgrade = true;
            } else if *name == header::TRANSFER_ENCODING {
                seen.transfer_encoding = true;
            } else if *name == X_REQUEST_ID && seen.request_id.is_none() {
                seen.request_id = Some(value.clone());
            }
        }
        seen
    }
}

/// A request's id, for the backend, the response and the log: the
/// client's `X-Request-Id` (the first, from [`SeenFields`]), or a new UUID
/// if it sent none (or an empty one). The backend gets this one alone, as
/// nginx's `proxy_set_header X-Request-ID` sends it.
pub fn request_id(client: Option<HeaderValue>) -> HeaderValue {
    if let Some(value) = client.filter(|v| !v.is_empty()) {
        return value;
    }
    super::request_ids::new_id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_lists_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            "keep-alive, X-Secret, host, Content-Length, X-Request-Id"
                .parse()
                .unwrap(),
        );
        h.insert(X_REQUEST_ID.clone(), "abc".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::HOST, "example.com".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        // Connection may not take away Host, the body's framing or the
        // request's id.
        assert_eq!(
            left,
            vec!["content-length", "host", "x-kept", "x-request-id"]
        );
    }

    #[test]
    fn common_connection_values_remove_only_the_fixed_fields() {
        for value in ["keep-alive", "Upgrade", "close", "Keep-Alive"] {
            let mut h = HeaderMap::new();
            h.insert(header::CONNECTION, value.parse().unwrap());
            h.insert(header::UPGRADE, "websocket".parse().unwrap());
            h.insert("keep-alive", "timeout=5".parse().unwrap());
            h.insert("x-kept", "1".parse().unwrap());
            strip_hop_by_hop(&mut h);
            let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, vec!["x-kept"], "{value}");
        }
        // `close` lists a field of that name as any other option would.
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "close".parse().unwrap());
        h.insert("close", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
        // A second value, or one with more in it, takes the general walk.
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "close".parse().unwrap());
        h.append(header::CONNECTION, "x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn a_connection_field_with_bytes_beyond_ascii_still_takes_what_it_lists() {
        let mut h = HeaderMap::new();
        let listing = HeaderValue::from_bytes(b"x-secret, caf\xe9").unwrap();
        h.insert(header::CONNECTION, listing);
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-kept"]);
    }

    #[test]
    fn connection_lists_are_read_token_by_token_in_every_field() {
        let has = |values: &[&[u8]], token| {
            let mut h = HeaderMap::new();
            for value in values {
                h.append(header::CONNECTION, HeaderValue::from_bytes(value).unwrap());
            }
            connection_has(&h, token)
        };
        assert!(has(&[b"Upgrade"], "upgrade"));
        assert!(has(&[b"keep-alive ,\tUPGRADE"], "upgrade"));
        assert!(has(&[b"keep-alive", b", upgrade,"], "upgrade"));
        assert!(
            !has(&[b"upgrades, x-upgrade"], "upgrade"),
            "no part of a token"
        );
        assert!(!has(&[b"keep-alive"], "close"));
        assert!(!has(&[], "close"));
        // A token beyond ASCII is passed over, not the whole field (where
        // `value_tokens`, for `Upgrade`, reads none of such a value).
        assert!(has(&[b"close, \xff"], "close"));
        assert!(has(&[b"caf\xe9, close"], "close"));
        assert_eq!(
            value_tokens(&HeaderValue::from_bytes(b"close, \xff").unwrap()).count(),
            0
        );
    }

    #[test]
    fn a_value_is_split_at_commas_and_trimmed_of_spaces_and_tabs() {
        let tokens = |value: &str| -> Vec<String> {
            value_tokens(&HeaderValue::from_str(value).unwrap())
                .map(str::to_string)
                .collect()
        };
        assert_eq!(tokens("websocket"), ["websocket"]);
        assert_eq!(tokens(" a ,, b\t,\tc d ,"), ["a", "b", "c d"]);
        assert!(tokens("").is_empty());
        assert!(tokens(" ,\t, ,").is_empty());
    }

    /// A 101's fields, in order, after [`only_upgrade_hop_fields`].
    fn after_switch(fields: &[(&str, &str)], protocol: &'static str) -> Vec<(String, String)> {
        let mut h = HeaderMap::new();
        for (name, value) in fields {
            h.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        only_upgrade_hop_fields(&mut h, HeaderValue::from_static(protocol));
        let mut left: Vec<_> = h
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        left.sort();
        left
    }

    fn pairs(fields: &[(&str, &str)]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_switch_with_just_the_two_upgrade_fields_is_left_as_it_is() {
        let plain = [
            ("connection", "Upgrade"),
            ("sec-websocket-accept", "x"),
            ("upgrade", "WebSocket"),
        ];
        assert_eq!(after_switch(&plain, "WebSocket"), pairs(&plain));
    }

    #[test]
    fn a_switch_with_other_hop_fields_keeps_only_the_two() {
        let expected = pairs(&[
            ("connection", "upgrade"),
            ("sec-websocket-accept", "x"),
            ("upgrade", "websocket"),
        ]);
        let cases: [&[(&str, &str)]; 5] = [
            // Connection lists a field of the backend's.
            &[
                ("connection", "Upgrade, X-Hop"),
                ("x-hop", "1"),
                ("upgrade", "websocket"),
            ],
            // Another fixed hop-by-hop field.
            &[
                ("connection", "upgrade"),
                ("keep-alive", "timeout=5"),
                ("upgrade", "websocket"),
            ],
            // Upgrade with more than the token switched to.
            &[("connection", "upgrade"), ("upgrade", "websocket, ")],
            // Two Connection fields.
            &[
                ("connection", "upgrade"),
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
            ],
            // No Connection at all.
            &[("upgrade", "websocket")],
        ];
        for fields in cases {
            let mut fields = fields.to_vec();
            fields.push(("sec-websocket-accept", "x"));
            assert_eq!(after_switch(&fields, "websocket"), expected, "{fields:?}");
        }
    }

    #[test]
    fn client_addresses_are_written_as_the_standard_text() {
        for client in [
            "0.0.0.0",
            "10.1.2.3",
            "192.168.100.9",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = client.parse().unwrap();
            assert_eq!(forwarded_for(ip), ip.to_string().as_str(), "{client}");
        }
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let kept = request_id(Some(HeaderValue::from_static("abc")));
        assert_eq!(kept, "abc");
        let made = request_id(Some(HeaderValue::from_static("")));
        assert_eq!(made.len(), 36, "an empty id is no id");
        assert_ne!(request_id(None), made, "each made id is new");
    }

    #[test]
    fn one_pass_sees_the_fields_the_pipeline_decides_on() {
        let mut h = HeaderMap::new();
        h.append(header::HOST, "a.example".parse().unwrap());
        h.append(header::HOST, "b.example".parse().unwrap());
        h.append(header::HOST, "c.example".parse().unwrap());
        h.append(X_REQUEST_ID.clone(), "first".parse().unwrap());
        h.append(X_REQUEST_ID.clone(), "second".parse().unwrap());
        h.append(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.append("x-other", "1".parse().unwrap());
        let seen = SeenFields::of(&h);
        assert_eq!(seen.host.unwrap(), "a.example");
        assert_eq!(seen.hosts, 2, "counted to two");
        assert_eq!(seen.request_id.unwrap(), "first");
        assert!(seen.transfer_encoding);
        assert!(!seen.connection_may_upgrade && !seen.upgrade);

        h.append(header::CONNECTION, "Keep-Alive".parse().unwrap());
        h.append(header::CONNECTION, "close".parse().unwrap());
        let seen = SeenFields::of(&h);
        assert!(!seen.connection_may_upgrade, "these two never ask for one");

        h.append(header::CONNECTION, "upgrade".parse().unwrap());
        h.append(header::UPGRADE, "websocket".parse().unwrap());
        let seen = SeenFields::of(&h);
        assert!(seen.connection_may_upgrade && seen.upgrade);

        let none = SeenFields::of(&HeaderMap::new());
        assert_eq!((none.hosts, none.host, none.request_id), (0, None, None));
    }
}
