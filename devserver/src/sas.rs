//! Shared access signatures for Azure Storage (and Azurite), minted and checked with the account key.
//!
//! HMAC-SHA256 with the base64-decoded account key over the fields of the signature joined by `\n`, as
//! `kusto-queued.md` ("Azurite") lists them for service version 2020-12-06 and later:
//! - account SAS: `account, sp, ss, srt, st, se, sip, spr, sv, ses` and a trailing `\n`;
//! - container SAS (`sr=c`): `sp, st, se, /blob/{account}/{container}, si, sip, spr, sv, sr, snapshot, ses,
//!   rscc, rscd, rsce, rscl, rsct`;
//! - queue SAS: `sp, st, se, /queue/{account}/{queue}, si, sip, spr, sv`;
//! - table SAS (`tn=`): `sp, st, se, /table/{account}/{table, lowercase}, si, sip, spr, sv, spk, srk, epk, erk`.
//!
//! Empty optional fields stay empty strings. Times are `YYYY-MM-DDThh:mm:ssZ`.

use ring::hmac;

use crate::b64;
use crate::http::percent_decode;

/// The storage service version every SAS minted here carries (`sv`).
pub const SAS_VERSION: &str = "2022-11-02";

/// Azurite's public development account.
pub const DEV_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's public development account key (documented by Microsoft; not a secret).
pub const DEV_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// What a SAS is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SasResource {
    /// Account SAS: `ss` services (e.g. `bqt`), `srt` resource types (e.g. `sco`).
    Account {
        services: String,
        resource_types: String,
    },
    /// Service SAS on a blob container (`sr=c`).
    Container(String),
    /// Service SAS on a queue.
    Queue(String),
    /// Service SAS on a table (`tn=`).
    Table(String),
}

/// The fields of one SAS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sas {
    pub resource: SasResource,
    /// `sp`, e.g. `rw`, `a`, `rp`, `raud`.
    pub permissions: String,
    /// `st`, Unix seconds; `None` leaves it out.
    pub start: Option<i64>,
    /// `se`, Unix seconds.
    pub expiry: i64,
    /// `spr`, e.g. `https,http`; empty leaves it out.
    pub protocol: String,
    /// `sv`.
    pub version: String,
}

/// `YYYY-MM-DDThh:mm:ssZ`.
pub fn sas_time(unix: i64) -> String {
    format!("{}Z", crate::server::utc_seconds(unix))
}

/// What a query value keeps unescaped: `A-Za-z0-9-._~` (RFC 3986 unreserved).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encode a query value: everything but `A-Za-z0-9-._~` (by `percent-encoding`).
pub fn query_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, QUERY_VALUE).to_string()
}

impl Sas {
    fn times(&self) -> (String, String) {
        (
            self.start.map(sas_time).unwrap_or_default(),
            sas_time(self.expiry),
        )
    }

    /// The exact string the signature is computed over.
    pub fn string_to_sign(&self, account: &str) -> String {
        let (st, se) = self.times();
        let (sp, spr, sv) = (&self.permissions, &self.protocol, &self.version);
        match &self.resource {
            SasResource::Account {
                services,
                resource_types,
            } => {
                let fields = [
                    account,
                    sp,
                    services,
                    resource_types,
                    &st,
                    &se,
                    "",
                    spr,
                    sv,
                    "",
                ];
                format!("{}\n", fields.join("\n"))
            }
            SasResource::Container(c) => {
                let res = format!("/blob/{account}/{c}");
                let mut fields = vec![sp.as_str(), &st, &se, &res, "", "", spr, sv, "c"];
                fields.extend(["", "", "", "", "", "", ""]);
                fields.join("\n")
            }
            SasResource::Queue(q) => {
                let res = format!("/queue/{account}/{q}");
                [sp.as_str(), &st, &se, &res, "", "", spr, sv].join("\n")
            }
            SasResource::Table(t) => {
                let res = format!("/table/{account}/{}", t.to_ascii_lowercase());
                [sp.as_str(), &st, &se, &res, "", "", spr, sv, "", "", "", ""].join("\n")
            }
        }
    }

    /// The base64 HMAC-SHA256 signature with the (base64) account key.
    pub fn signature(&self, account: &str, key_b64: &str) -> String {
        let key = b64::decode(key_b64).unwrap_or_default();
        let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
        b64::encode(hmac::sign(&key, self.string_to_sign(account).as_bytes()).as_ref())
    }

    /// The query string (without `?`), values percent-encoded, `sig` last.
    pub fn query(&self, account: &str, key_b64: &str) -> String {
        self.query_with_sig(&self.signature(account, key_b64))
    }

    /// The query string with a given signature (a tampered one, in tests).
    pub fn query_with_sig(&self, sig: &str) -> String {
        let (st, se) = self.times();
        let mut q = vec![("sv", self.version.clone())];
        match &self.resource {
            SasResource::Account {
                services,
                resource_types,
            } => {
                q.push(("ss", services.clone()));
                q.push(("srt", resource_types.clone()));
            }
            SasResource::Container(_) => q.push(("sr", "c".into())),
            SasResource::Queue(_) => {}
            SasResource::Table(t) => q.push(("tn", t.clone())),
        }
        q.push(("sp", self.permissions.clone()));
        if self.start.is_some() {
            q.push(("st", st));
        }
        q.push(("se", se));
        if !self.protocol.is_empty() {
            q.push(("spr", self.protocol.clone()));
        }
        q.push(("sig", sig.to_string()));
        q.iter()
            .map(|(k, v)| format!("{k}={}", query_encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// Why a SAS on a URL is not one this account signed for that resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SasCheck {
    Valid,
    /// Missing or malformed fields.
    Malformed(String),
    /// Signature does not match.
    BadSignature,
    /// `se` is in the past.
    Expired,
}

/// Parse `YYYY-MM-DDThh:mm:ssZ` (fractions tolerated: RFC 3339 in UTC, by the `time` crate) to Unix
/// seconds.
pub fn parse_sas_time(s: &str) -> Option<i64> {
    if !s.ends_with('Z') {
        return None;
    }
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

/// Check the SAS in `query` (still percent-encoded) against `resource`, signed with this account's key.
pub fn check(
    query: &str,
    resource: SasResource,
    account: &str,
    key_b64: &str,
    now: i64,
) -> SasCheck {
    let pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k, false), percent_decode(v, false))
        })
        .collect();
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let (Some(sv), Some(sp), Some(se), Some(sig)) = (get("sv"), get("sp"), get("se"), get("sig"))
    else {
        return SasCheck::Malformed("sv, sp, se and sig are required".into());
    };
    let Some(expiry) = parse_sas_time(&se) else {
        return SasCheck::Malformed(format!("se {se:?} is not a time"));
    };
    let start = match get("st") {
        Some(st) => match parse_sas_time(&st) {
            Some(t) => Some(t),
            None => return SasCheck::Malformed(format!("st {st:?} is not a time")),
        },
        None => None,
    };
    if matches!(resource, SasResource::Container(_)) && get("sr").as_deref() != Some("c") {
        return SasCheck::Malformed("a container SAS needs sr=c".into());
    }
    let sas = Sas {
        resource,
        permissions: sp,
        start,
        expiry,
        protocol: get("spr").unwrap_or_default(),
        version: sv,
    };
    // The canonical time text must be what was signed: a time written differently would not verify.
    if sas_time(expiry) != se {
        return SasCheck::Malformed(format!("se {se:?} is not in the form YYYY-MM-DDThh:mm:ssZ"));
    }
    if sas.signature(account, key_b64) != sig {
        return SasCheck::BadSignature;
    }
    if expiry <= now {
        return SasCheck::Expired;
    }
    SasCheck::Valid
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-12-01T00:00:00Z and 2026-12-01T12:00:00Z.
    const T0: i64 = 1_796_083_200;
    const T1: i64 = T0 + 12 * 3600;

    fn container() -> Sas {
        Sas {
            resource: SasResource::Container("ingestdata-0".into()),
            permissions: "rw".into(),
            start: Some(T0),
            expiry: T1,
            protocol: "https,http".into(),
            version: "2022-11-02".into(),
        }
    }

    #[test]
    fn times_round_trip() {
        assert_eq!(sas_time(T0), "2026-12-01T00:00:00Z");
        assert_eq!(parse_sas_time("2026-12-01T12:00:00Z"), Some(T1));
        assert_eq!(parse_sas_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_sas_time("2024-02-29T23:59:59.123Z"),
            Some(1_709_251_199)
        );
        assert!(parse_sas_time("2026-13-01T00:00:00Z").is_none());
        assert!(
            parse_sas_time("2026-02-29T00:00:00Z").is_none(),
            "not a leap year"
        );
        assert!(parse_sas_time("2026-12-01T00:00:00+01:00").is_none());
        assert!(parse_sas_time("2026-12-01T00:00:00").is_none());
        assert_eq!(sas_time(-1), "1969-12-31T23:59:59Z");
        assert_eq!(sas_time(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(query_encode("a b/c+d~e_f.g-h%"), "a%20b%2Fc%2Bd~e_f.g-h%25");
    }

    /// The strings to sign, spelled out field by field from kusto-queued.md, and signatures computed
    /// independently (Python: `base64(hmac.new(b64decode(DEV_KEY), s, sha256).digest())`).
    #[test]
    fn known_vectors() {
        let c = container();
        let s = "rw\n2026-12-01T00:00:00Z\n2026-12-01T12:00:00Z\n/blob/devstoreaccount1/ingestdata-0\n\n\nhttps,http\n2022-11-02\nc\n\n\n\n\n\n\n";
        assert_eq!(c.string_to_sign(DEV_ACCOUNT), s);
        assert_eq!(
            c.signature(DEV_ACCOUNT, DEV_KEY),
            "qLT6AmELvzD4oTJMhxKELsDAJuH+i/bvRew6Gr3O3Zc="
        );
        assert_eq!(
            c.query(DEV_ACCOUNT, DEV_KEY),
            "sv=2022-11-02&sr=c&sp=rw&st=2026-12-01T00%3A00%3A00Z&se=2026-12-01T12%3A00%3A00Z&spr=https%2Chttp&sig=qLT6AmELvzD4oTJMhxKELsDAJuH%2Bi%2FbvRew6Gr3O3Zc%3D"
        );
        let a = Sas {
            resource: SasResource::Account {
                services: "bqt".into(),
                resource_types: "sco".into(),
            },
            permissions: "rwdlacup".into(),
            start: None,
            expiry: T1,
            protocol: String::new(),
            version: "2022-11-02".into(),
        };
        assert_eq!(
            a.string_to_sign(DEV_ACCOUNT),
            "devstoreaccount1\nrwdlacup\nbqt\nsco\n\n2026-12-01T12:00:00Z\n\n\n2022-11-02\n\n"
        );
        assert_eq!(
            a.signature(DEV_ACCOUNT, DEV_KEY),
            "RdFL3RWdYp1nXrhr0BqlFhCsBAk0P4EwZT+cxmrjZI8="
        );
        let q = Sas {
            resource: SasResource::Queue("readyforaggregation-secured".into()),
            permissions: "a".into(),
            ..c.clone()
        };
        assert_eq!(
            q.string_to_sign(DEV_ACCOUNT),
            "a\n2026-12-01T00:00:00Z\n2026-12-01T12:00:00Z\n/queue/devstoreaccount1/readyforaggregation-secured\n\n\nhttps,http\n2022-11-02"
        );
        let t = Sas {
            resource: SasResource::Table("IngestionsStatus".into()),
            permissions: "raud".into(),
            ..c.clone()
        };
        assert_eq!(
            t.string_to_sign(DEV_ACCOUNT),
            "raud\n2026-12-01T00:00:00Z\n2026-12-01T12:00:00Z\n/table/devstoreaccount1/ingestionsstatus\n\n\nhttps,http\n2022-11-02\n\n\n\n"
        );
        assert!(t
            .query(DEV_ACCOUNT, DEV_KEY)
            .contains("&tn=IngestionsStatus&"));
    }

    #[test]
    fn check_accepts_its_own_and_refuses_tampering_and_expiry() {
        let c = container();
        let res = SasResource::Container("ingestdata-0".into());
        let q = c.query(DEV_ACCOUNT, DEV_KEY);
        assert_eq!(
            check(&q, res.clone(), DEV_ACCOUNT, DEV_KEY, T0),
            SasCheck::Valid
        );
        assert_eq!(
            check(&q, res.clone(), DEV_ACCOUNT, DEV_KEY, T1),
            SasCheck::Expired
        );
        let other = SasResource::Container("ingestdata-1".into());
        assert_eq!(
            check(&q, other, DEV_ACCOUNT, DEV_KEY, T0),
            SasCheck::BadSignature
        );
        let widened = q.replace("sp=rw", "sp=rwd");
        assert_eq!(
            check(&widened, res.clone(), DEV_ACCOUNT, DEV_KEY, T0),
            SasCheck::BadSignature
        );
        assert!(matches!(
            check("sv=1&sp=r", res, DEV_ACCOUNT, DEV_KEY, T0),
            SasCheck::Malformed(_)
        ));
    }
}
