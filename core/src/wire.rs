//! The streaming-ingest request as the service expects it, byte for byte (see `shared/kusto-protocol.md`):
//! cluster URL rules, data formats, percent-encoding, the path and query, and the headers. Pure functions only;
//! the transport sends what these build.

use std::fmt::Write as _;

use crate::error::{Error, ErrorKind};

/// Our prefix of `x-ms-client-request-id`, as KPC/KGC/KJC/KNC are the official SDKs'.
pub const REQUEST_ID_PREFIX: &str = "KEC";
/// `x-ms-version` the official SDKs send.
pub const API_VERSION: &str = "2024-12-12";
/// Our client name in `x-ms-client-version`.
pub const CLIENT_NAME: &str = "Kusto.Edge.Client";

/// The cluster's engine endpoint, checked and normalised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterUrl {
    /// `https` (true) or `http`.
    pub https: bool,
    /// Host name or IP literal (IPv6 in brackets), lower case, with a leading `ingest-` removed.
    pub host: String,
    /// Explicit port, if any.
    pub port: Option<u16>,
}

impl ClusterUrl {
    /// Parses `https://host[:port][/]`. Streaming goes to the engine, so a data-management URL
    /// (`https://ingest-x...`) is turned into the engine's, as the SDKs do.
    pub fn parse(url: &str) -> Result<ClusterUrl, Error> {
        let bad = |why: &str| {
            Error::new(
                ErrorKind::ConfigInvalidValue,
                format!("url '{url}' is invalid: {why}"),
            )
        };
        let (https, rest) = if let Some(r) = strip_prefix_ci(url, "https://") {
            (true, r)
        } else if let Some(r) = strip_prefix_ci(url, "http://") {
            (false, r)
        } else {
            return Err(bad("it must start with https://"));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@'])
            || rest.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("give only scheme, host and optional port, e.g. https://mycluster.westeurope.kusto.windows.net"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let end = v6
                .find(']')
                .ok_or_else(|| bad("unterminated IPv6 literal"))?;
            let host = &rest[..end + 2];
            let after = &v6[end + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad("unexpected text after the IPv6 literal")),
            };
            (host, port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() || host.len() > 253 {
            return Err(bad("empty or overlong host"));
        }
        if !host.starts_with('[')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(bad("host names are letters, digits, '-' and '.'"));
        }
        let port = match port {
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| bad("port must be 1..65535"))?,
            ),
            None => None,
        };
        let mut host = host.to_ascii_lowercase();
        if let Some(engine) = host.strip_prefix("ingest-") {
            host = engine.to_owned();
        }
        Ok(ClusterUrl { https, host, port })
    }

    /// True for `localhost` and loopback addresses: the only hosts a token may reach over plain http.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.host)
    }

    /// `scheme://host[:port]`.
    pub fn base(&self) -> String {
        let mut s = String::with_capacity(self.host.len() + 16);
        s.push_str(if self.https { "https://" } else { "http://" });
        s.push_str(&self.host);
        if let Some(p) = self.port {
            let _ = write!(s, ":{p}");
        }
        s
    }
}

/// The data-management ("ingest") endpoint: where `.get ingestion resources` goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DmUrl {
    /// `scheme://host[:port]`, host in lower case.
    pub base: String,
    /// The host alone (brackets kept for IPv6), for the transport's route.
    pub host: String,
    /// `https` (true) or `http`.
    pub https: bool,
    /// Explicit port, if any.
    pub port: Option<u16>,
}

impl DmUrl {
    /// An explicit `ingest.dm_url`, taken as it is (no `ingest-` added or removed): `https://host[:port][/]`.
    pub fn parse(url: &str) -> Result<DmUrl, Error> {
        let c = ClusterUrl::parse(url)
            .map_err(|e| Error::new(e.kind, e.message.replacen("url '", "ingest.dm_url '", 1)))?;
        let rest = url.split_once("://").map_or("", |(_, r)| r);
        let had_ingest = rest.len() >= 7 && rest.as_bytes()[..7].eq_ignore_ascii_case(b"ingest-");
        let host = if had_ingest {
            format!("ingest-{}", c.host)
        } else {
            c.host
        };
        Ok(DmUrl::from_parts(c.https, host, c.port))
    }

    /// The SDKs' rule: `ingest-` goes in front of the engine's host, compared without the port. An IP literal or
    /// localhost has no DM name to derive (`None`: the caller must give one); the onebox host is its own DM.
    pub fn derive(engine: &ClusterUrl) -> Option<DmUrl> {
        let h = engine.host.as_str();
        let is_ip = h.starts_with('[') || h.parse::<std::net::IpAddr>().is_ok();
        if is_ip || is_loopback_host(h) {
            return None;
        }
        let host = if h == "onebox.dev.kusto.windows.net" || h.starts_with("ingest-") {
            h.to_owned()
        } else {
            format!("ingest-{h}")
        };
        Some(DmUrl::from_parts(engine.https, host, engine.port))
    }

    fn from_parts(https: bool, host: String, port: Option<u16>) -> DmUrl {
        let mut base = String::with_capacity(host.len() + 16);
        base.push_str(if https { "https://" } else { "http://" });
        base.push_str(&host);
        if let Some(p) = port {
            let _ = write!(base, ":{p}");
        }
        DmUrl {
            base,
            host,
            https,
            port,
        }
    }

    /// The DM as a host to route to (the transport's proxy rules and messages), without removing `ingest-`.
    pub fn as_host(&self) -> ClusterUrl {
        ClusterUrl {
            https: self.https,
            host: self.host.clone(),
            port: self.port,
        }
    }

    /// `{dm}/v1/rest/mgmt`.
    pub fn mgmt_url(&self) -> String {
        format!("{}/v1/rest/mgmt", self.base)
    }
}

/// The one loopback rule, for everything that decides whether plain http may go somewhere (the transport, the
/// credential URLs, the DM derivation): a literal loopback address (`127.0.0.0/8`, `::1`, IPv6 with or without
/// brackets) or the name `localhost` itself. Not `*.localhost`: glibc hands those names to DNS, and whatever DNS
/// answers for `evil.localhost` would get a token in clear text.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match h.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Data formats the service takes, with their wire names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// Comma-separated values.
    Csv,
    /// Tab-separated values.
    Tsv,
    /// Semicolon-separated values.
    Scsv,
    /// SOH-separated values.
    Sohsv,
    /// Pipe-separated values.
    Psv,
    /// One line of text per record.
    Txt,
    /// Tab-separated values with escaping.
    Tsve,
    /// The whole body as one value.
    Raw,
    /// One JSON object per line.
    Json,
    /// One JSON document per request.
    SingleJson,
    /// JSON objects one after another.
    MultiJson,
    /// Avro container (already compressed).
    Avro,
    /// Avro via the Apache library (already compressed).
    ApacheAvro,
    /// Parquet file (already compressed).
    Parquet,
    /// ORC file (already compressed).
    Orc,
    /// Structured stream (already compressed).
    SStream,
    /// W3C extended log lines.
    W3cLogFile,
}

const FORMATS: &[(&str, Format)] = &[
    ("csv", Format::Csv),
    ("tsv", Format::Tsv),
    ("scsv", Format::Scsv),
    ("sohsv", Format::Sohsv),
    ("psv", Format::Psv),
    ("txt", Format::Txt),
    ("tsve", Format::Tsve),
    ("raw", Format::Raw),
    ("json", Format::Json),
    ("singlejson", Format::SingleJson),
    ("multijson", Format::MultiJson),
    ("avro", Format::Avro),
    ("apacheavro", Format::ApacheAvro),
    ("parquet", Format::Parquet),
    ("orc", Format::Orc),
    ("sstream", Format::SStream),
    ("w3clogfile", Format::W3cLogFile),
];

impl Format {
    /// Parses a format name, case-insensitively (Go sends CamelCase, the others lower case).
    pub fn parse(name: &str) -> Result<Format, Error> {
        FORMATS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, f)| f)
            .ok_or_else(|| {
                let names: Vec<&str> = FORMATS.iter().map(|(n, _)| *n).collect();
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "unknown data format '{}': use one of {}",
                        name.escape_debug(),
                        names.join(", ")
                    ),
                )
            })
    }

    /// The lower-case wire name.
    pub fn wire_name(self) -> &'static str {
        FORMATS
            .iter()
            .find(|&&(_, f)| f == self)
            .map(|(n, _)| *n)
            .unwrap_or("csv")
    }

    /// The kind of ingestion mapping this format takes, as the SDKs name it beside a mapping reference in a
    /// queued message (`ingestionMappingType`): the delimited and text formats take CSV mappings, the JSON ones
    /// JSON mappings, the rest their own kind.
    pub fn mapping_kind(self) -> &'static str {
        match self {
            Format::Json | Format::SingleJson | Format::MultiJson => "Json",
            Format::Avro => "Avro",
            Format::ApacheAvro => "ApacheAvro",
            Format::Parquet => "Parquet",
            Format::Orc => "Orc",
            Format::SStream => "SStream",
            Format::W3cLogFile => "W3CLogFile",
            _ => "Csv",
        }
    }

    /// Formats that are compressed already: the SDKs do not gzip them again, and a record is a whole file.
    pub fn is_binary(self) -> bool {
        matches!(
            self,
            Format::Avro | Format::ApacheAvro | Format::Parquet | Format::Orc | Format::SStream
        )
    }

    /// Formats in which one request carries one document: records cannot be batched together.
    pub fn one_record_per_request(self) -> bool {
        self.is_binary() || matches!(self, Format::SingleJson | Format::Raw)
    }
}

/// Everything but the RFC 3986 unreserved characters (`A-Z a-z 0-9 - . _ ~`): what every path segment, query
/// value and form field of the library is encoded with, so a `+`, `&`, `=` or `/` in a value (or a secret) can
/// never change the URL or the form.
const NOT_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Appends `s` percent-encoded (upper-case `%XX` of its UTF-8 bytes, see [`NOT_UNRESERVED`]): a path segment,
/// a query value or an `application/x-www-form-urlencoded` field. Never reallocates when `out` has room for
/// `3 * s.len()` more bytes, which is how form bodies holding a secret stay in one zeroed buffer.
pub fn percent_encode(out: &mut String, s: &str) {
    for piece in percent_encoding::utf8_percent_encode(s, NOT_UNRESERVED) {
        out.push_str(piece);
    }
}

/// The request URL: `{cluster}/v1/rest/ingest/{db}/{table}?streamFormat={format}[&mappingName={m}]`.
pub fn ingest_url(
    cluster: &ClusterUrl,
    database: &str,
    table: &str,
    format: Format,
    mapping: Option<&str>,
) -> String {
    let mut u = cluster.base();
    u.push_str("/v1/rest/ingest/");
    percent_encode(&mut u, database);
    u.push('/');
    percent_encode(&mut u, table);
    u.push_str("?streamFormat=");
    u.push_str(format.wire_name());
    if let Some(m) = mapping {
        u.push_str("&mappingName=");
        percent_encode(&mut u, m);
    }
    u
}

/// Checks a database, table or mapping name before it becomes part of every request.
pub fn check_entity_name(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 1024 || name.chars().any(|c| c.is_control()) {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "{what} name '{}' is invalid: 1..1024 characters, no control characters",
                name.escape_debug()
            ),
        ));
    }
    // '.' is unreserved, so percent-encoding leaves "." and ".." as they are, and every HTTP stack and proxy on
    // the way normalises them away (RFC 3986 dot segments): the request would reach another path than the one
    // named, e.g. `/v1/rest/ingest/db/..` becomes `/v1/rest/ingest/`. Names of dots only are refused for all
    // three: no Kusto entity can be called that.
    if name.bytes().all(|b| b == b'.') {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "{what} name '{name}' is invalid: a name made only of dots would change the request's URL path; use the real {what} name"
            ),
        ));
    }
    Ok(())
}

/// `x-ms-client-request-id` of an operation on a chunk: `KEC.{operation};{chunk id};{attempt}`
/// (`executeStreamingIngest`, `executeManagedStreamingIngest` as the SDKs' managed client, `executeQueuedIngest`
/// for storage requests). The chunk id stays the same across retries (server-side tracing follows the chunk),
/// the attempt number makes every request unique.
pub fn request_id_for(operation: &str, chunk_id: &str, attempt: u32) -> String {
    format!("{REQUEST_ID_PREFIX}.{operation};{chunk_id};{attempt}")
}

/// Makes a value safe for an HTTP header the way the SDKs do: non-ASCII and control characters become `?`.
pub fn header_ascii(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// Makes a value safe inside `{}` of `x-ms-client-version`: also `\r\n`, whitespace, `{`, `}` and `|` become `_`.
pub fn version_field(s: &str) -> String {
    header_ascii(s)
        .chars()
        .map(|c| {
            if c.is_whitespace() || matches!(c, '{' | '}' | '|') {
                '_'
            } else {
                c
            }
        })
        .collect()
}

/// `x-ms-client-version`: `Kusto.Edge.Client:{0.1.0}|Runtime.{rust-armv7-linux}:{1.87}[|App.{name}:{ver}]`.
pub fn client_version(app: &str, app_version: Option<&str>) -> String {
    let mut s = format!(
        "{CLIENT_NAME}:{{{}}}|Runtime.{{{}}}:{{{}}}",
        version_field(env!("CARGO_PKG_VERSION")),
        version_field(&format!(
            "rust-{}-{}",
            std::env::consts::ARCH,
            std::env::consts::OS
        )),
        version_field(env!("CARGO_PKG_RUST_VERSION")),
    );
    if let Some(v) = app_version {
        let _ = write!(
            s,
            "|App.{{{}}}:{{{}}}",
            version_field(app),
            version_field(v)
        );
    }
    s
}

/// A random (version 4) UUID from the system's CSPRNG, as chunk id.
pub fn new_uuid(rng: &dyn ring::rand::SecureRandom) -> Result<[u8; 16], Error> {
    let mut b = [0u8; 16];
    rng.fill(&mut b)
        .map_err(|_| Error::new(ErrorKind::Internal, "the system random generator failed"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(b)
}

/// The 36-character text form of a UUID. From a table, not `write!("{:02x}")`: sixteen trips through the
/// formatter were 8,000 instructions per call (callgrind), and a request makes several.
pub fn uuid_text(b: &[u8; 16]) -> heapless::String<36> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = heapless::String::new();
    for (i, &byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            let _ = s.push('-');
        }
        let _ = s.push(char::from(HEX[usize::from(byte >> 4)]));
        let _ = s.push(char::from(HEX[usize::from(byte & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {

    #[test]
    fn uuid_text_is_the_lower_case_8_4_4_4_12_form() {
        let id: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(0xa5));
        let mut want = String::new();
        for (i, b) in id.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                want.push('-');
            }
            want.push_str(&format!("{b:02x}"));
        }
        assert_eq!(super::uuid_text(&id).as_str(), want);
        assert_eq!(
            super::uuid_text(&[0xff; 16]).as_str(),
            "ffffffff-ffff-ffff-ffff-ffffffffffff"
        );
    }

    #[test]
    fn dm_url_is_derived_as_the_sdks_do() {
        let d = |u: &str| DmUrl::derive(&ClusterUrl::parse(u).unwrap()).map(|d| d.base);
        // (engine url, derived DM)
        let table: &[(&str, Option<&str>)] = &[
            (
                "https://c.westeurope.kusto.windows.net",
                Some("https://ingest-c.westeurope.kusto.windows.net"),
            ),
            (
                "https://C.WestEurope.kusto.windows.net/",
                Some("https://ingest-c.westeurope.kusto.windows.net"),
            ),
            // A DM url given as url is first turned into the engine's, then back: never ingest-ingest-.
            (
                "https://ingest-c.kusto.windows.net",
                Some("https://ingest-c.kusto.windows.net"),
            ),
            // The port is kept and not part of the host comparison.
            (
                "https://c.kusto.windows.net:8443",
                Some("https://ingest-c.kusto.windows.net:8443"),
            ),
            ("http://localhost:8080", None),
            // Not loopback (DNS decides where it goes): a name like any other.
            (
                "http://dev.localhost:8080",
                Some("http://ingest-dev.localhost:8080"),
            ),
            ("http://127.0.0.1:8080", None),
            ("https://10.0.0.5", None),
            ("http://[::1]:8080", None),
            ("https://[2001:db8::1]", None),
            (
                "https://onebox.dev.kusto.windows.net",
                Some("https://onebox.dev.kusto.windows.net"),
            ),
        ];
        for (url, want) in table {
            assert_eq!(d(url).as_deref(), *want, "{url}");
        }
    }

    #[test]
    fn an_explicit_dm_url_is_taken_as_it_is() {
        let d = DmUrl::parse("http://127.0.0.1:9000/").unwrap();
        assert_eq!(d.base, "http://127.0.0.1:9000");
        assert_eq!(d.mgmt_url(), "http://127.0.0.1:9000/v1/rest/mgmt");
        let d = DmUrl::parse("https://Ingest-C.kusto.windows.net").unwrap();
        assert_eq!(d.base, "https://ingest-c.kusto.windows.net");
        let e = DmUrl::parse("ftp://x").unwrap_err();
        assert!(e.message.contains("ingest.dm_url"), "{}", e.message);
    }

    use super::*;

    #[test]
    fn percent_encoding_escapes_everything_that_could_change_a_url_or_form() {
        let enc = |v: &str| {
            let mut s = String::new();
            percent_encode(&mut s, v);
            s
        };
        assert_eq!(
            enc("https://kusto.kusto.windows.net/.default"),
            "https%3A%2F%2Fkusto.kusto.windows.net%2F.default"
        );
        assert_eq!(enc("a+b&c=d e~_-."), "a%2Bb%26c%3Dd%20e~_-.");
        assert_eq!(enc("ü%"), "%C3%BC%25");
    }

    #[test]
    fn ingest_url_percent_encodes_names() {
        let c = ClusterUrl::parse("https://ingest-Help.Kusto.Windows.net").unwrap();
        assert_eq!(c.host, "help.kusto.windows.net");
        let u = ingest_url(&c, "my db", "T/1ü", Format::MultiJson, Some("map&x=1"));
        assert_eq!(
            u,
            "https://help.kusto.windows.net/v1/rest/ingest/my%20db/T%2F1%C3%BC?streamFormat=multijson&mappingName=map%26x%3D1"
        );
    }

    #[test]
    fn names_made_only_of_dots_are_refused_because_they_would_change_the_url_path() {
        for what in ["database", "table", "mapping"] {
            for name in [".", "..", "...", "...."] {
                let e = check_entity_name(what, name).unwrap_err();
                assert_eq!(e.kind, ErrorKind::InvalidArgument, "{what} {name:?}");
                assert!(
                    e.message.contains(&format!("{what} name '{name}'"))
                        && e.message.contains("URL path"),
                    "{}",
                    e.message
                );
            }
        }
        // Dots inside a name are ordinary characters and stay allowed.
        for ok in ["a.b", ".a", "..a", "a..", "T_1", "my db"] {
            assert!(check_entity_name("table", ok).is_ok(), "{ok:?}");
        }
        assert!(check_entity_name("table", "").is_err());
    }

    #[test]
    fn cluster_url_rejects_paths_credentials_and_bad_ports() {
        for bad in [
            "mycluster.kusto.windows.net",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://u:p@host",
            "https://host:0",
            "https://host:99999",
            "https://ho st",
            "https://host?x",
        ] {
            assert!(ClusterUrl::parse(bad).is_err(), "{bad}");
        }
        let c = ClusterUrl::parse("http://[::1]:8080/").unwrap();
        assert_eq!(c.host, "[::1]");
        assert_eq!(c.port, Some(8080));
        assert!(c.is_loopback());
        assert_eq!(c.base(), "http://[::1]:8080");
        assert!(ClusterUrl::parse("http://127.0.0.2").unwrap().is_loopback());
        assert!(!ClusterUrl::parse("http://10.0.0.1").unwrap().is_loopback());
        assert!(!ClusterUrl::parse("http://localhost.evil.com")
            .unwrap()
            .is_loopback());
        for h in ["localhost", "LocalHost", "127.0.0.1", "[::1]", "::1"] {
            assert!(is_loopback_host(h), "{h}");
        }
        for h in [
            "localhost.evil.com",
            "a.localhost",
            "evil.localhost",
            ".localhost",
            "evillocalhost",
            "10.0.0.1",
            "",
            "[::2]",
        ] {
            assert!(!is_loopback_host(h), "{h}");
        }
    }

    #[test]
    fn formats_parse_case_insensitively_and_know_what_is_binary() {
        assert_eq!(Format::parse("MultiJson").unwrap(), Format::MultiJson);
        assert_eq!(Format::parse("CSV").unwrap().wire_name(), "csv");
        assert!(Format::parse("Parquet").unwrap().is_binary());
        assert!(!Format::Json.is_binary());
        // The mapping kinds the SDKs put beside a mapping reference.
        for (name, kind) in [
            ("csv", "Csv"),
            ("psv", "Csv"),
            ("txt", "Csv"),
            ("json", "Json"),
            ("multijson", "Json"),
            ("singlejson", "Json"),
            ("avro", "Avro"),
            ("parquet", "Parquet"),
            ("w3clogfile", "W3CLogFile"),
        ] {
            assert_eq!(Format::parse(name).unwrap().mapping_kind(), kind, "{name}");
        }
        assert_eq!(
            Format::parse("xml").unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }

    #[test]
    fn header_values_are_made_ascii_like_the_sdks_do() {
        assert_eq!(header_ascii("gätewäy\r\n"), "g?tew?y??");
        assert_eq!(version_field("a b{c}|d"), "a_b_c__d");
        let v = client_version("my app", Some("1.2"));
        assert!(
            v.starts_with("Kusto.Edge.Client:{0.1.0}|Runtime.{rust-"),
            "{v}"
        );
        assert!(v.ends_with("|App.{my_app}:{1.2}"), "{v}");
    }

    #[test]
    fn uuids_are_version_4_and_request_ids_carry_the_attempt() {
        let rng = ring::rand::SystemRandom::new();
        let a = new_uuid(&rng).unwrap();
        let t = uuid_text(&a);
        assert_eq!(t.len(), 36);
        assert_eq!(&t[14..15], "4");
        assert_eq!(
            request_id_for("executeStreamingIngest", &t, 2),
            format!("KEC.executeStreamingIngest;{t};2")
        );
    }
}
